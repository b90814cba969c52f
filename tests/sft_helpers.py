"""Shared helpers of the SFT tests: synthetic agent conversations, a small BPE tokenizer, running train.py."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from litere.train import sft
from litere.bpe import train_tokenizer
from litere.tokenizer import render

REPO = Path(__file__).resolve().parents[1]
NAMES = ["Ixo", "Bo Lin", "Kara Voss", "Velm", "Odu Park", "Tessa", "Quorn", "Pim Hale", "Arlo", "Nessa"]


def tool_call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def conversation(rng: random.Random, index: int) -> list[dict]:
    """A search-agent trajectory of 1-3 tool calls with tool responses of varying length."""
    entity, founder = rng.sample(NAMES, 2)
    messages = [{"role": "system", "content": "You are a research agent. Use the tools."},
                {"role": "user", "content": f" Question: Who founded {entity}?"}]
    for turn in range(rng.randint(1, 3)):
        messages.append({"role": "assistant", "content": f"<think>\nLook up {entity} ({turn}).\n</think>\n\n"
                                                         + tool_call("search", query=[entity])})
        facts = " ".join(f"{founder} founded {entity} in {1900 + index}." for _ in range(rng.randint(1, 8)))
        messages.append({"role": "user", "content": f"<tool_response>\n{facts}\n</tool_response>"})
    answer = f"<think>\nIt was {founder}.\n</think>\n\n<answer>{founder}</answer>"
    messages.append({"role": "assistant", "content": answer})
    return messages


def write_conversations(path: Path, n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    conversations = [conversation(rng, i) for i in range(n)]
    with Path(path).open("w") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages, "id": len(messages)}) + "\n")
    return conversations


def make_tokenizer(out_dir: Path, conversations: list[list[dict]], vocab_size: int = 384):
    return train_tokenizer((render(c) for c in conversations), vocab_size, out_dir)


def tiny_overrides(tmp: Path, **extra) -> list[str]:
    """Settings of a fast fp32 run on the data of `make_data` (from scratch: 2 layers, width 64)."""
    settings = dict(model_preset="tiny", tokenizer=str(tmp / "tok"), train_files=[str(tmp / "train.jsonl")],
                    precision="fp32", global_batch=8, pack_tokens=512, cutoff_len=512, lr=3e-3, warmup_ratio=0.2,
                    seed=0, threads=1)
    settings.update(extra)
    arch = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16)
    out = [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    return out + [f"arch.{k}={v}" for k, v in arch.items()] if settings["model_preset"] else out


def run_python(args: list[str], nproc: int = 0, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """A Python script with its arguments in a subprocess: plain python (nproc=0) or torchrun with nproc gloo
    processes."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc \
        else [sys.executable]
    return subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          **popen)


def run_train(args: list[str], nproc: int = 0, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """train.py in a subprocess: plain python (nproc=0) or torchrun with nproc gloo processes."""
    return run_python([str(REPO / "train.py"), "--stage", "sft", *args], nproc, timeout, **popen)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    """Loss of each step in metrics.jsonl, which must hold each step once, in order (a resumed run too)."""
    records = metrics(run_dir)
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"metrics.jsonl steps {steps}"
    return {r["step"]: r["loss"] for r in records}


def make_data(tmp: Path, n: int = 40) -> Path:
    """train.jsonl of n conversations, eval.jsonl of 8 others and a BPE tokenizer trained on the first, in `tmp`."""
    conversations = write_conversations(tmp / "train.jsonl", n, seed=0)
    write_conversations(tmp / "eval.jsonl", 8, seed=1)
    make_tokenizer(tmp / "tok", conversations)
    return tmp


def crash_in_step(monkeypatch, step: int):
    """Make the trainer's `step`-th optimizer step raise, as a crash in the middle of a run would."""
    real_step, calls = sft.optimizer_step, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(sft, "optimizer_step", crashing)
