"""Shared helpers of the RL tests: a toy task a small policy can learn by reward alone, a page store for its tools,
and the settings of fast CPU runs."""
import json
import random
from pathlib import Path

from litere import run_config
from litere.env import SETTINGS_META_KEY, EnvSettings, PageStore
from litere.rl.config import RLConfig
from litere.train import sft
from sft_helpers import make_tokenizer, tiny_overrides

SYSTEM = "Answer with one word."
WORDS = ["yes", "no", "maybe", "never", "always"]


def toy_conversation(question: str, word: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f" Question: {question}"},
            {"role": "assistant", "content": f"<think>\nOne word.\n</think>\n\n<answer>{word}</answer>"}]


def make_toy(tmp: Path, questions: int = 16, sft_steps: int = 40, yes_share: float = 0.2) -> Path:
    """In `tmp`: questions.jsonl (target "yes"), a page store, a tokenizer, and sft/final — a tiny model SFT'd to
    answer "yes" about `yes_share` of the time and "no" otherwise (sft_steps=0: a random one)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    texts = [f"Tell me a word, number {i}." for i in range(questions)]
    db = tmp / "pages.db"
    with PageStore(db) as store:
        store.add_pages([("p/yes", "Yes", "The word is yes."), ("p/no", "No", "The word is no.")])
        store.set_meta(SETTINGS_META_KEY, EnvSettings.compact().to_dict())
    with (tmp / "questions.jsonl").open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"q{i}", "question": text, "answers": ["yes"], "data_source": "toy",
                                "env": str(db)}) + "\n")
    conversations = [toy_conversation(rng.choice(texts), "yes" if rng.random() < yes_share else "no")
                     for _ in range(400)]
    with (tmp / "train.jsonl").open("w") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}) + "\n")
    make_tokenizer(tmp / "tok", conversations + [toy_conversation(t, w) for t in texts for w in WORDS],
                   vocab_size=320)
    (tmp / "system.txt").write_text(SYSTEM)
    if not sft_steps:  # a random start model: for tests that need the loop to run, not to learn
        return _random_start(tmp)
    cfg = run_config.load(sft.SFTConfig, None, tiny_overrides(tmp, run_dir=str(tmp / "sft"), max_steps=sft_steps,
                                                              global_batch=32, lr=1e-2))
    sft.train(cfg)
    return tmp


def _random_start(tmp: Path) -> Path:
    """sft/final: a randomly initialised tiny model (the architecture of tiny_overrides) with the toy tokenizer."""
    import torch

    from litere.config import ModelConfig
    from litere.model import Qwen3
    from litere.tokenizer import Tokenizer
    from litere.weights import save_model

    arch = {k.removeprefix("arch."): int(v) for k, v in (o.split("=") for o in tiny_overrides(tmp))
            if k.startswith("arch.")}
    config = ModelConfig.preset("tiny").replace(vocab_size=Tokenizer.from_dir(tmp / "tok").vocab_size,
                                                torch_dtype="float32", **arch)
    model = Qwen3(config)
    model.init_weights(std=0.02, generator=torch.Generator().manual_seed(0))
    save_model(model, tmp / "sft" / "final", tokenizer_dir=tmp / "tok")
    return tmp


def rl_overrides(tmp: Path, **extra) -> list[str]:
    """A fast fp32 RL run on the toy task of `make_toy`."""
    settings = dict(model=str(tmp / "sft" / "final"), questions=[str(tmp / "questions.jsonl")],
                    system_prompt=str(tmp / "system.txt"), precision="fp32", threads=1, prompts_per_step=4,
                    samples_per_prompt=8, temperature=1.0, max_turns=2, max_response_tokens=48, max_prompt_tokens=64,
                    max_batch_tokens=1024, max_num_seqs=64, cache_tokens=8192, tool_workers=0, lr=3e-3,
                    max_steps=4, seed=0, log_every=1, dump_rollouts=False)
    settings.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def rl_config(tmp: Path, **extra) -> RLConfig:
    return run_config.load(RLConfig, None, rl_overrides(tmp, **extra))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
