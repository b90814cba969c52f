"""One RL step: where its time goes, and litere's RL stage against TRL's GRPOTrainer on the same work.

Settings (each prints tables; the last line of the output is JSON):
  toy    always. A self-contained single-turn task built like tests/rl_helpers.py: a small byte-level BPE, a page
         store, P questions, a Qwen3 of the `tiny` preset (4 layers, width 256; 3.2M parameters with the 320-token
         vocabulary) SFT'd for a few steps to answer "<answer>yes</answer>" or "<answer>no</answer>"; n samples per
         question, every turn exactly N sampled tokens (no early stop), exact-match reward. litere's RL stage
         (litere.rl.loop.RLRun.train_step, the code of `train.py --stage rl1`) and TRL's GRPOTrainer run in one
         process on the same weights, tokenizer, prompt token ids, n, N, sampling, clip range, beta = 0 (no KL), one
         optimizer step per batch, fp32, the same thread count; their steps alternate (TRL, litere, TRL, ...), so
         load from other processes hits both alike. Without trl installed the TRL side is skipped, with a message
         (pip install -e '.[bench]').
  agent  with --model DIR --questions FILE: the demo's multi-turn agent (configs/demo_rl.toml: GRPO from the demo's
         SFT model over the mini world's page stores, with the demo's system prompt), P questions of the file every
         step; litere alone, or with --agent-trl against TRL's tool loop (environment_factory) running litere's tools.
  shape  with --shape NAME: one RL step of a preset's shape with random weights, bf16 rollouts (a copy of the fp32
         master weights refreshed before each rollout), a synthetic single-turn task with fixed-length turns:
         rollout and update tokens/s, MFU (litere.train.core.step_flops over the peak of the device), weight-sync
         seconds, peak memory. Meant for a GPU (`--no-toy --device cuda --shape qwen3-0.6b`, benchmarks/gpu_check.sh);
         `--shape tiny` runs the same code on the CPU.

Timing. litere: RLRun's own per-phase seconds (weight sync, rollout, reward, old logprobs, update; metrics.jsonl
"seconds"; old logprobs is 0 where the update's forward gives π_old, litere/rl/loop.py), the step's wall time, and process CPU time per phase (a subclass of RLRun around `rollout`, `_old_pass`,
`_update`). TRL: a subclass of GRPOTrainer times its own methods (no change to what they do): `_generate_single_turn`
(transformers' `generate`, every turn: the rollout), `_calculate_rewards` (reward), the rest of
`_generate_and_score_completions` ("prepare": tokenising, padding, advantages, tool calls); a TrainerCallback times
the step from `on_step_begin` to `on_step_end` (generation through the optimizer step), and "update" is that minus
`_generate_and_score_completions` (forward + backward over the padded batch, clipping, AdamW).

    python benchmarks/bench_rl.py                       # toy: litere vs TRL, 1 warm-up + 5 timed steps each
    python benchmarks/bench_rl.py --no-toy --model runs/demo/sft/final \
        --questions runs/demo/world/train_questions.jsonl [--agent-prompts 4 --agent-trl]
    python benchmarks/bench_rl.py --no-toy --shape qwen3-0.6b --device cuda    # one bf16 step on a GPU
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import run_config  # noqa: E402
from litere.bpe import train_tokenizer  # noqa: E402
from litere.config import PRESETS  # noqa: E402
from litere.env import SETTINGS_META_KEY, EnvSettings, PageStore  # noqa: E402
from litere.reward import exact_match, extract_answer  # noqa: E402
from litere.rl.config import RLConfig  # noqa: E402
from litere.rl.loop import RLRun  # noqa: E402
from litere.tokenizer import Tokenizer, render  # noqa: E402
from litere.train import distributed, sft  # noqa: E402
from litere.train.core import peak_flops, step_flops  # noqa: E402

PHASES = ("weight_sync", "rollout", "reward", "old_logprobs", "update")
TOY_SYSTEM = "Answer with one word."
TOY_WORDS = ["yes", "no", "maybe", "never", "always"]


# --- the machine ------------------------------------------------------------------------------------------------
def machine(device: str) -> dict:
    flags, name = set(), platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        lines = open("/proc/cpuinfo").read().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = set(next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags")))
    info = {"cpu": name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    for package in ("transformers", "trl", "accelerate", "datasets"):
        with contextlib.suppress(ImportError):
            info[package] = __import__(package).__version__
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(info: dict) -> str:
    gpu = f"{info['gpu']}, host " if "gpu" in info else ""
    bf16 = "avx512_bf16" if info["avx512_bf16"] else "no avx512_bf16"
    return (f"{gpu}{info['cpu']} ({info['cores']} cores, {bf16}{', amx' if info['amx_bf16'] else ''}, torch CPU "
            f"capability {info['cpu_capability']}); python {info['python']}, torch {info['torch']}, transformers "
            f"{info.get('transformers', '-')}, trl {info.get('trl', 'not installed')}; {info['threads']} threads")


# --- litere's side ------------------------------------------------------------------------------------------------
class CPUTimedRLRun(RLRun):
    """RLRun with the process CPU time of its rollout, old-logprob pass and update recorded (on a shared machine
    CPU time, with one thread, is the steadier measure); what they do is unchanged."""

    def __init__(self, *a, **k):
        self.cpu: dict[str, float] = {}
        super().__init__(*a, **k)

    def _cpu(self, name, fn, *a):
        start = time.process_time()
        try:
            return fn(*a)
        finally:
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - start

    def rollout(self, questions):
        return self._cpu("rollout", super().rollout, questions)

    def _old_pass(self, *a):
        return self._cpu("old_logprobs", super()._old_pass, *a)

    def _update(self, *a):
        return self._cpu("update", super()._update, *a)


class Ours:
    """RLRun driven step by step, as RLRun.run() does (without checkpoints, probes or exports)."""

    def __init__(self, cfg: RLConfig, fixed_length: bool = False):
        self.env = distributed.init(cfg.device)
        self.run = CPUTimedRLRun(cfg, self.env)
        self.fixed_length = fixed_length  # every trajectory must sample exactly max_response_tokens

    def step(self) -> dict:
        run = self.run
        run.cpu.clear()
        start, cpu_start = time.perf_counter(), time.process_time()
        record = run.train_step()
        if run.env.device.type == "cuda":
            torch.cuda.synchronize()
        record["wall_s"] = time.perf_counter() - start
        record["cpu_s"] = time.process_time() - cpu_start
        record["cpu_split"] = {k: run.cpu.get(k, 0.0) for k in ("rollout", "old_logprobs", "update")}
        record["cpu_split"]["other"] = record["cpu_s"] - sum(record["cpu_split"].values())
        record["trajectories"] = run.cfg.prompts_per_step * run.cfg.samples_per_prompt  # one process
        if self.fixed_length and record["sampled_tokens_mean"] != run.cfg.max_response_tokens:
            raise SystemExit(f"bench_rl: trajectories sampled {record['sampled_tokens_mean']} tokens on average, not "
                             f"{run.cfg.max_response_tokens}; terminations {record['termination']}")
        run.step += 1
        run.position = run.order.advance(run.position)
        return record


def our_split(record: dict) -> dict:
    split = {k: record["seconds"].get(k, 0.0) for k in PHASES}
    split["other"] = max(0.0, record["wall_s"] - sum(split.values()))
    return split


def common_settings(work: Path, args, **extra) -> dict:
    """The RL settings both sides share (or, for the agent, that a benchmark run needs)."""
    settings = dict(run_dir=str(work / "ours"), resume="never", export=False, dump_rollouts=False, log_every=10**6,
                    checkpoint_every=0, probe_every=0, probe_questions=[], threads=args.threads, seed=0,
                    max_steps=args.warmup + args.steps, warmup_ratio=0.0)
    settings.update(extra)
    return settings


# --- the toy task -------------------------------------------------------------------------------------------------
def toy_conversation(question: str, word: str) -> list[dict]:
    return [{"role": "system", "content": TOY_SYSTEM}, {"role": "user", "content": f" Question: {question}"},
            {"role": "assistant", "content": f"<think>\nOne word.\n</think>\n\n<answer>{word}</answer>"}]


def page_store(path: Path) -> str:
    """A two-page store: the agent needs an environment, though a single-turn answer never calls a tool."""
    with PageStore(path) as store:
        store.add_pages([("p/yes", "Yes", "The word is yes."), ("p/no", "No", "The word is no.")])
        store.set_meta(SETTINGS_META_KEY, EnvSettings.compact().to_dict())
    return str(path)


def build_toy(work: Path, n_questions: int, sft_steps: int) -> tuple[Path, list[dict]]:
    """A tokenizer, P questions (target "yes") and a `tiny` model SFT'd to answer "yes" ~20% of the time and "no"
    otherwise; returns the model's HF directory (with the tokenizer) and the questions. With fixed-length turns the
    model goes on sampling after its answer and the judge reads the last <answer> tag, so most rewards are 0: the
    cost of a step does not depend on them (neither side drops zero-advantage groups)."""
    rng = random.Random(0)
    texts = [f"Tell me a word, number {i}." for i in range(n_questions)]
    env = page_store(work / "pages.db")
    questions = [{"id": f"q{i}", "question": t, "answers": ["yes"], "data_source": "toy", "env": env}
                 for i, t in enumerate(texts)]
    conversations = [toy_conversation(rng.choice(texts), "yes" if rng.random() < 0.2 else "no") for _ in range(400)]
    with (work / "train.jsonl").open("w") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}) + "\n")
    train_tokenizer((render(c) for c in conversations + [toy_conversation(t, w) for t in texts for w in TOY_WORDS]),
                    320, work / "tok")
    cfg = sft.SFTConfig(run_dir=str(work / "sft"), model_preset="tiny", tokenizer=str(work / "tok"),
                        train_files=[str(work / "train.jsonl")], precision="fp32", global_batch=16, pack_tokens=1024,
                        cutoff_len=512, lr=3e-3, warmup_ratio=0.2, max_steps=sft_steps, seed=0, threads=1,
                        log_every=10**6)
    with contextlib.redirect_stdout(sys.stderr):
        sft.train(cfg)
    return work / "sft" / "final", questions


def write_questions(path: Path, questions: list[dict]):
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))


# --- TRL's side ---------------------------------------------------------------------------------------------------
def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def timed_grpo_trainer():
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with wall-clock timers around three of its own methods; what they do is unchanged."""

        def __init__(self, *a, **k):
            self.phase: dict[str, float] = {}
            self.completion_lengths: list[int] = []
            super().__init__(*a, **k)

        def _timed(self, name, fn, *a, **k):
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.phase[name] = self.phase.get(name, 0.0) + time.perf_counter() - start
                self.phase["cpu_" + name] = self.phase.get("cpu_" + name, 0.0) + time.process_time() - cpu_start

        def _generate_single_turn(self, *a, **k):  # every generate call: the first turn and each after a tool
            ids, logprobs = self._timed("generation", super()._generate_single_turn, *a, **k)
            self.completion_lengths += [len(x) for x in ids]
            return ids, logprobs

        def _calculate_rewards(self, *a, **k):
            return self._timed("reward", super()._calculate_rewards, *a, **k)

        def _generate_and_score_completions(self, *a, **k):
            return self._timed("generate_and_score", super()._generate_and_score_completions, *a, **k)

    return TimedGRPOTrainer


def grpo_config(work: Path, batch: int, args, **settings):
    """TRL's settings as litere's: fp32 on the CPU, no gradient checkpointing (GRPOConfig's default is on), one
    optimizer step per generation batch, AdamW with a constant learning rate, beta = 0 (no reference model)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(work / "trl"), report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=0, dataloader_num_workers=0,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_iterations=1,
        max_steps=args.warmup + args.steps, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        beta=0.0, loss_type="grpo", scale_rewards="group", mask_truncated_completions=False, **settings)


def make_trl(model_dir: Path, prompts: list[str], answers: list[list[str]], args, work: Path, cfg: RLConfig, clock):
    """Toy: TRL's GRPOTrainer on the same weights, tokenizer and prompt text, every completion N tokens long."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def reward(completions, answers, **kwargs):  # litere's exact-match judge on the extracted answer
        return [1.0 if exact_match(extract_answer(c), a) else 0.0 for c, a in zip(completions, answers)]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = grpo_config(work, args.prompts * args.n, args, num_generations=args.n, learning_rate=cfg.lr,
                         weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, temperature=cfg.temperature,
                         top_p=cfg.top_p, top_k=cfg.top_k, epsilon=cfg.clip_low, epsilon_high=cfg.clip_high,
                         max_completion_length=args.tokens,
                         generation_kwargs={"min_new_tokens": args.tokens})  # EOS masked until N tokens: fixed length
    dataset = Dataset.from_list([{"prompt": t, "answers": a} for t, a in zip(prompts, answers)])
    trainer = timed_grpo_trainer()(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=[clock])
    clock.trainer = trainer
    return trainer, tokenizer


# litere's chat layout (litere.tokenizer.render: Qwen3 turns, tool results as one user turn of <tool_response>
# blocks, the Thinking-2507 generation prompt that opens <think>) as a chat template, and a response template that
# parses a turn of it; TRL's tool loop needs both. The template leaves out the tool schemas: the demo model was
# trained without them in its prompt.
LITERE_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'tool' -%}"
    "{%- if loop.first or loop.previtem.role != 'tool' -%}{{ '<|im_start|>user\\n' }}"
    "{%- else -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- elif m.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if m.reasoning_content -%}{{ '<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' }}{%- endif -%}"
    "{{ m.content or '' }}"
    "{%- for c in m.tool_calls or [] -%}"
    "{{ '<tool_call>\\n' + ({'name': c.function.name, 'arguments': c.function.arguments} | tojson)"
    " + '\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif -%}")
LITERE_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n<think>\n",
    "fields": {
        "reasoning_content": {"open_pattern": r"(?=[\s\S]*?</think>)", "close_pattern": r"</think>\s*",
                              "content": "text"},
        "tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def make_trl_agent(model_dir: str, questions: list, system: str, args, work: Path, cfg: RLConfig,
                   tokenizer: Tokenizer, clock, counters: dict):
    """Agent: TRL's GRPOTrainer with its tool loop (environment_factory) over the same page stores, running
    litere's own tool code, on the same weights, prompts and limits (max_turns, max_response_tokens)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from litere.agent.tools import ToolCall, execute_tool
    from litere.env import open_env
    from litere.reward import ANSWER_RE
    from litere.tokenizer import USER_PREFIX

    opened: dict[str, object] = {}

    class World:
        """One rollout's environment: the question's page store; its public methods are the agent's tools."""

        def reset(self, env=None, mask_url=None, **_):
            if env not in opened:
                opened[env] = open_env(env, **cfg.env_settings)
            self.env, self.mask_url = opened[env], mask_url

        def _run(self, name: str, **arguments) -> str:
            text, _, _, latency = execute_tool(self.env, ToolCall(name, arguments), self.mask_url)
            counters["tools_s"] += latency
            counters["tool_calls"] += 1
            return text

        def search(self, query: list[str]) -> str:
            """Search the pages and return the top results.

            Args:
                query: The search queries.
            """
            return self._run("search", query=query)

        def visit(self, url: list[str], goal: str) -> str:
            """Visit pages and return what they say about the goal.

            Args:
                url: The pages to visit.
                goal: What to look for.
            """
            return self._run("visit", url=url, goal=goal)

    def reward(completions, answers, **kwargs):  # the last answer of the last answering turn, exact match
        out = []
        for messages, targets in zip(completions, answers):
            turns = [m.get("content") or "" for m in messages if m["role"] == "assistant"]
            answer = next((extract_answer(t) for t in reversed(turns) if ANSWER_RE.search(t)), None)
            out.append(1.0 if exact_match(answer, targets) else 0.0)
        counters["rewards"] += out
        return out

    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    hf_tok.chat_template, hf_tok.response_template = LITERE_CHAT_TEMPLATE, LITERE_RESPONSE_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.generation_config.eos_token_id = list(tokenizer.stop_token_ids)  # a turn ends as litere's does
    model.generation_config.pad_token_id = tokenizer.endoftext_id
    config = grpo_config(work, cfg.prompts_per_step * cfg.samples_per_prompt, args,
                         num_generations=cfg.samples_per_prompt, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                         max_grad_norm=cfg.grad_clip, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                         epsilon=cfg.clip_low, epsilon_high=cfg.clip_high,
                         max_completion_length=cfg.max_response_tokens, max_tool_calling_iterations=cfg.max_turns - 1)
    rows = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": USER_PREFIX + q.question}],
             "answers": q.answers, "env": q.env, "mask_url": q.mask_url or ""} for q in questions]
    trainer = timed_grpo_trainer()(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
                                   processing_class=hf_tok, environment_factory=World, callbacks=[clock])
    clock.trainer = trainer
    # the same ids on both sides: the prompts, and the forced segment after a tool call
    for row, q in zip(rows, questions):
        ids = hf_tok.apply_chat_template(row["prompt"], tools=trainer.tools, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
        if ids != tokenizer.prompt_ids(q.question, system):
            raise SystemExit(f"bench_rl: TRL renders question {q.id} into other ids than litere")
    text = "Result 1: a page about something.\nResult 2: another one."
    if trainer._get_tool_suffix_ids([{"role": "tool", "name": "search", "content": text}]) != \
            tokenizer.tool_response_ids(text):
        raise SystemExit("bench_rl: TRL's tool-response segment differs from litere's")
    return trainer


def trl_clock(on_step, counters: dict | None = None):
    """A TrainerCallback that times each optimizer step and hands its record to `on_step`; `counters` (tools_s,
    tool_calls, rewards: what the agent's tools and reward function add up) are read and reset per step."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        trainer = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.trainer.phase.clear()
            self.trainer.completion_lengths.clear()
            if counters is not None:
                counters.update(tools_s=0.0, tool_calls=0, rewards=[])
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu_start
            phase = dict(self.trainer.phase)
            split = {"generation": phase.get("generation", 0.0), "reward": phase.get("reward", 0.0)}
            if counters is not None:
                split["tools"] = counters["tools_s"]
            split["prepare"] = phase.get("generate_and_score", 0.0) - sum(split.values())
            split["update"] = wall - phase.get("generate_and_score", 0.0)
            cpu_split = {"generation": phase.get("cpu_generation", 0.0)}
            cpu_split["prepare"] = phase.get("cpu_generate_and_score", 0.0) - cpu_split["generation"]
            cpu_split["update"] = cpu - phase.get("cpu_generate_and_score", 0.0)
            record = {"wall_s": wall, "cpu_s": cpu, "split": split, "cpu_split": cpu_split,
                      "completion_lengths": list(self.trainer.completion_lengths)}
            if counters is not None:
                record.update(tool_calls=counters["tool_calls"], rewards=list(counters["rewards"]))
            on_step(record)

    return Clock()


# --- summaries ----------------------------------------------------------------------------------------------------
def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "-"


def split_table(rows: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: side | step s (median, range) | each phase's median seconds and share of the step."""
    out = []
    for side, splits in rows.items():
        walls = [sum(s.values()) for s in splits]
        total = med(walls)
        cells = [f"{k} {med([s[k] for s in splits]):.3f}s ({med([s[k] / sum(s.values()) for s in splits]):.0%})"
                 for k in splits[0]]
        out.append(f"| {side} | {total:.3f} ({spread(walls)}) | " + "; ".join(cells) + " |")
    return out


# --- settings -----------------------------------------------------------------------------------------------------
# litere's loss as TRL has it: token-mean per sequence, then the mean over sequences (TRL's loss_type="grpo"); the
# clip range [1 - 0.2, 1 + 0.4] (epsilon, epsilon_high); no dual clip and no truncated importance sampling (TRL's
# generate path has neither); no KL; group-normalised advantages; one optimizer step per batch
MATCHED_LOSS = dict(loss_agg="seq-mean-token-mean", clip_low=0.2, clip_high=0.4, dual_clip=0.0, tis_cap=0.0,
                    tis_veto=0.0, kl_coef=0.0, ppo_epochs=1, mini_batches=1, advantage="grpo")


def interleaved(ours: Ours, args, make_trainer, label: str) -> tuple[list[dict], list[dict], list[float]]:
    """warmup + steps steps on each side, alternating TRL, litere, TRL, ... (litere alone without a trainer)."""
    ours_records, trl_records, load = [], [], [os.getloadavg()[0]]

    def our_step(*_):
        ours_records.append(ours.step())
        load.append(os.getloadavg()[0])
        r = ours_records[-1]
        print(f"  {label} litere step {len(ours_records)}: {r['wall_s']:.2f}s (rollout {r['seconds']['rollout']:.2f}s)"
              f", reward {r['reward_mean']:.2f}, {r['sampled_tokens_mean']:.0f} sampled tokens per trajectory",
              file=sys.stderr, flush=True)

    if make_trainer is None:
        for _ in range(args.warmup + args.steps):
            our_step()
        return ours_records, trl_records, load

    def trl_then_ours(record):
        trl_records.append(record)
        lengths = record["completion_lengths"]
        print(f"  {label} TRL    step {len(trl_records)}: {record['wall_s']:.2f}s (generation "
              f"{record['split']['generation']:.2f}s), {len(lengths)} sequences generated, "
              f"{statistics.mean(lengths) if lengths else 0:.0f} tokens each", file=sys.stderr, flush=True)
        our_step()

    trainer = make_trainer(trl_then_ours)
    torch.set_num_threads(args.threads)  # the same on both sides, whatever the trainer set up
    trainer.train()
    return ours_records, trl_records, load


def no_trl_reason(skip: bool) -> str | None:
    if skip:
        return "--no-trl: skipping the TRL side"
    if not trl_available():
        return ("trl is not installed (pip install -e '.[bench]', or pip install trl==1.16.0): skipping the TRL side; "
                "litere alone")
    return None


def summarise(records: list[dict], split) -> dict:
    return {"step_s": [r["wall_s"] for r in records], "cpu_s": [r["cpu_s"] for r in records],
            "split": [split(r) for r in records], "cpu_split": [r["cpu_split"] for r in records]}


def compare(result: dict, ours: list[dict], theirs: list[dict], sampled_tokens):
    """Per side: step seconds, CPU seconds, the split, the generation share and sampled tokens/s; the ratios."""
    result["ours"] = summarise(ours, our_split)
    result["ours"].update(generation_share=[r["generation_share"] for r in ours],
                          rollout_tokens_per_s=[r["tokens_per_s"]["rollout"] for r in ours],
                          sampled_tokens=[r["sampled_tokens_mean"] * r["trajectories"] for r in ours],
                          reward_mean=[r["reward_mean"] for r in ours])
    if not theirs:
        return result
    result["trl"] = summarise(theirs, lambda r: r["split"])
    result["trl"].update(generation_share=[r["split"]["generation"] / r["wall_s"] for r in theirs],
                         sampled_tokens=[sampled_tokens(r) for r in theirs],
                         rollout_tokens_per_s=[sampled_tokens(r) / r["split"]["generation"] for r in theirs])
    result["ratio"] = med(result["trl"]["step_s"]) / med(result["ours"]["step_s"])
    result["paired_ratios"] = [t / o for t, o in zip(result["trl"]["step_s"], result["ours"]["step_s"])]
    result["cpu_ratio"] = med(result["trl"]["cpu_s"]) / med(result["ours"]["cpu_s"])
    return result


def print_comparison(result: dict):
    sides = [("litere", "ours"), ("TRL GRPOTrainer", "trl")]
    print("| side | step s (median, range) | split: median seconds (share of step) |\n|---|---:|---|")
    for line in split_table({name: result[key]["split"] for name, key in sides if key in result}):
        print(line)
    print("| side | CPU s per step (median, range) | split: median process CPU seconds (share) |\n|---|---:|---|")
    for line in split_table({name: result[key]["cpu_split"] for name, key in sides if key in result}):
        print(line)
    for side, key in (("litere", "ours"), ("TRL", "trl")):
        if key in result:
            r = result[key]
            print(f"{side}: generation share {med(r['generation_share']):.0%} ({min(r['generation_share']):.0%}-"
                  f"{max(r['generation_share']):.0%}), {med(r['sampled_tokens']):.0f} sampled tokens per step at "
                  f"{med(r['rollout_tokens_per_s']):.0f} tok/s")
    if "ratio" in result:
        pr = result["paired_ratios"]
        print(f"TRL / litere seconds per step: {result['ratio']:.2f}x (step by step: {med(pr):.2f}x, "
              f"{min(pr):.2f}-{max(pr):.2f}; in process CPU seconds: {result['cpu_ratio']:.2f}x); goal >= 3x")


def run_toy(args, work: Path) -> dict:
    t0 = time.perf_counter()
    model_dir, questions = build_toy(work, args.prompts, args.sft_steps)
    write_questions(work / "questions.jsonl", questions)
    (work / "system.txt").write_text(TOY_SYSTEM)
    print(f"toy: built tokenizer and SFT'd model in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    cfg = RLConfig(**common_settings(
        work, args, model=str(model_dir), questions=[str(work / "questions.jsonl")],
        system_prompt=str(work / "system.txt"), device="cpu", precision="fp32", rollout_dtype="fp32",
        prompts_per_step=args.prompts, samples_per_prompt=args.n, temperature=1.0, top_p=1.0, top_k=0, max_turns=1,
        max_response_tokens=args.tokens, ignore_eos=True, max_prompt_tokens=256, tool_workers=0,
        max_num_seqs=args.prompts * args.n, compile=args.compile or "", lr=1e-6, weight_decay=0.01, grad_clip=1.0,
        **MATCHED_LOSS))
    with contextlib.redirect_stdout(sys.stderr):
        ours = Ours(cfg, fixed_length=True)
    tok = ours.run.tokenizer
    prompt_ids = [tok.prompt_ids(q["question"], TOY_SYSTEM) for q in questions]
    prompts = [tok.decode(ids) for ids in prompt_ids]
    if reason := no_trl_reason(args.no_trl):
        print(f"bench_rl: {reason}", file=sys.stderr)
        make_trainer = None
    else:
        def make_trainer(on_step):
            trainer, hf_tok = make_trl(model_dir, prompts, [q["answers"] for q in questions], args, work, cfg,
                                       trl_clock(on_step))
            if [hf_tok(text)["input_ids"] for text in prompts] != prompt_ids:
                raise SystemExit("bench_rl: TRL's tokenizer gives other prompt ids than litere's; not the same work")
            return trainer

    ours_records, trl_records, load = interleaved(ours, args, make_trainer, "toy")
    lengths = {n for r in trl_records for n in r["completion_lengths"]}
    if trl_records and lengths != {args.tokens}:
        raise SystemExit(f"bench_rl: TRL completions had lengths {sorted(lengths)}, not all {args.tokens}")
    result = {"setting": "toy", "prompts": args.prompts, "n": args.n, "tokens": args.tokens,
              "prompt_tokens": statistics.mean(len(p) for p in prompt_ids),
              "model_parameters": ours.run.mcfg.num_parameters(), "warmup": args.warmup, "steps": args.steps,
              "compile": args.compile or "eager", "load_average": [min(load), max(load)]}
    return compare(result, ours_records[args.warmup:], trl_records[args.warmup:],
                   lambda r: sum(r["completion_lengths"]))


def print_toy(result: dict):
    print(f"\ntoy RL step: {result['prompts']} prompts x {result['n']} samples, {result['tokens']} sampled tokens each "
          f"(fixed length), prompts of {result['prompt_tokens']:.0f} tokens, model "
          f"{result['model_parameters'] / 1e6:.1f}M parameters, fp32, litere's decode step {result['compile']}; "
          f"medians of {result['steps']} steps after {result['warmup']} warm-up; load average "
          f"{result['load_average'][0]:.1f}-{result['load_average'][1]:.1f}")
    print_comparison(result)


def run_agent(args, work: Path) -> dict:
    from litere.demo import DEMO_SYSTEM_PROMPT
    from litere.questions import load_questions

    (work / "demo_system.txt").write_text(DEMO_SYSTEM_PROMPT)
    base = run_config.load(RLConfig, REPO / "configs" / "demo_rl.toml", [f"model={json.dumps(args.model)}"])
    prompts = args.agent_prompts or base.prompts_per_step
    # the same P questions every step on both sides (a seeded sample of the file)
    picked = random.Random(0).sample(load_questions(args.questions), prompts)
    write_questions(work / "questions.jsonl", [{**vars(q), "answers": q.answers} for q in picked])
    reason = no_trl_reason(args.no_trl) if args.agent_trl else None
    compare_trl = args.agent_trl and reason is None
    overrides = {**common_settings(work, args), "questions": [str(work / "questions.jsonl")],
                 "system_prompt": str(work / "demo_system.txt"), "device": "cpu", "prompts_per_step": prompts,
                 **({"compile": args.compile} if args.compile else {}), **(MATCHED_LOSS if compare_trl else {})}
    cfg = run_config.load(RLConfig, REPO / "configs" / "demo_rl.toml",
                          [f"model={json.dumps(args.model)}"] + [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    with contextlib.redirect_stdout(sys.stderr):
        ours = Ours(cfg)
    counters = {}
    if compare_trl:
        def make_trainer(on_step):
            return make_trl_agent(args.model, ours.run.questions, DEMO_SYSTEM_PROMPT, args, work, cfg,
                                  ours.run.tokenizer, trl_clock(on_step, counters), counters)
    else:
        make_trainer = None
        if reason:
            print(f"bench_rl: agent: {reason}", file=sys.stderr)

    ours_records, trl_records, load = interleaved(ours, args, make_trainer, "agent")
    result = {"setting": "agent", "model": args.model, "questions": args.questions, "prompts": prompts,
              "n": cfg.samples_per_prompt, "max_turns": cfg.max_turns, "max_response_tokens": cfg.max_response_tokens,
              "loss": "matched to TRL" if compare_trl else "configs/demo_rl.toml",
              "model_parameters": ours.run.mcfg.num_parameters(), "warmup": args.warmup, "steps": args.steps,
              "compile": cfg.compile or "eager", "load_average": [min(load), max(load)]}
    timed = ours_records[args.warmup:]
    result.update(response_tokens_mean=[r["response_tokens_mean"] for r in timed],
                  tool_calls_mean=[r["tool_calls_mean"] for r in timed],
                  turns_mean=[r["assistant_turns_mean"] for r in timed])
    # TRL: sampled tokens are the completion tokens its generate calls returned (tool results are not generated)
    result = compare(result, timed, trl_records[args.warmup:], lambda r: sum(r["completion_lengths"]))
    if "trl" in result:
        trajectories = prompts * cfg.samples_per_prompt
        theirs = trl_records[args.warmup:]
        result["trl"].update(reward_mean=[statistics.mean(r["rewards"]) for r in theirs],
                             tool_calls_mean=[r["tool_calls"] / trajectories for r in theirs],
                             generate_calls=[len(r["completion_lengths"]) for r in theirs])
    return result


def print_agent(result: dict):
    print(f"\nagent RL step (configs/demo_rl.toml, {result['model']}): {result['prompts']} prompts x {result['n']} "
          f"samples, up to {result['max_turns']} turns / {result['max_response_tokens']} response tokens, model "
          f"{result['model_parameters'] / 1e6:.1f}M parameters, fp32, loss {result['loss']}, litere's decode step "
          f"{result['compile']}; medians of {result['steps']} steps after {result['warmup']} warm-up; load average "
          f"{result['load_average'][0]:.1f}-{result['load_average'][1]:.1f}")
    print(f"litere trajectories: {med(result['response_tokens_mean']):.0f} response tokens, "
          f"{med(result['turns_mean']):.1f} assistant turns, {med(result['tool_calls_mean']):.1f} tool calls; reward "
          f"{med(result['ours']['reward_mean']):.2f}")
    if "trl" in result:
        t = result["trl"]
        print(f"TRL trajectories: {med(t['tool_calls_mean']):.1f} tool calls, {med(t['generate_calls']):.0f} "
              f"sequences generated per step (a turn each); reward {med(t['reward_mean']):.2f}")
    print_comparison(result)


def run_shape(args, work: Path) -> dict:
    """One (or --steps) RL step(s) of a preset's shape with random weights; a short warm-up step first."""
    rng = random.Random(0)
    words = "alpha bravo delta north river stone amber cloud ember frost grove harbor".split()
    texts = [" ".join(rng.choice(words) for _ in range(args.question_words)) + "?" for _ in range(args.prompts)]
    tokenizer = train_tokenizer([render([{"role": "user", "content": t}]) for t in texts] * 4, 400, work / "tok")
    env = page_store(work / "pages.db")
    questions = [{"id": f"s{i}", "question": t, "answers": ["amber"], "data_source": "synthetic", "env": env}
                 for i, t in enumerate(texts)]
    write_questions(work / "questions.jsonl", questions)
    (work / "system.txt").write_text(TOY_SYSTEM)
    large = args.shape == "qwen3-4b"
    cfg = RLConfig(**common_settings(
        work, args, model_preset=args.shape, tokenizer=str(work / "tok"),
        arch={"vocab_size": PRESETS[args.shape]["vocab_size"]}, questions=[str(work / "questions.jsonl")],
        system_prompt=str(work / "system.txt"), device=args.device, precision="bf16", rollout_dtype="bf16",
        prompts_per_step=args.prompts, samples_per_prompt=args.n, temperature=1.0, top_p=1.0, max_turns=1,
        max_response_tokens=args.tokens, ignore_eos=True, max_prompt_tokens=1024, tool_workers=0,
        max_num_seqs=args.prompts * args.n, max_batch_tokens=16384, compile=args.compile or "", lr=1e-6,
        pack_tokens=16384, activation_checkpointing=large, max_steps=args.steps + 1))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        ours = Ours(cfg, fixed_length=True)
    setup_s = time.perf_counter() - t0
    run = ours.run
    # warm-up: the same step with short turns (allocator, kernels, cuBLAS handles), then the measured steps
    run.cfg.max_response_tokens = min(16, args.tokens)
    warm = ours.step()
    run.cfg.max_response_tokens = args.tokens
    records = [ours.step() for _ in range(args.steps)]
    lengths = [len(tokenizer.prompt_ids(q["question"], TOY_SYSTEM)) + args.tokens for q in questions
               for _ in range(args.n)]
    flops = step_flops(run.mcfg, lengths)  # forward + backward of the update
    peak = peak_flops(cfg, run.env)
    rows = []
    for r in records:
        row = {"step_s": r["wall_s"], "split": our_split(r), "rollout_tokens_per_s": r["tokens_per_s"]["rollout"],
               "update_tokens_per_s": r["tokens_per_s"]["update"],
               "old_logprobs_tokens_per_s": r["tokens_per_s"].get("old_logprobs"),
               "weight_sync_s": r["seconds"]["weight_sync"], "generation_share": r["generation_share"],
               "peak_memory_gb": r.get("peak_memory_gb"), "update_tflops": flops / r["seconds"]["update"] / 1e12}
        if peak:
            row["update_mfu"] = flops / r["seconds"]["update"] / peak
            # the no-grad old-logprob pass (when the step runs one) is a third of a training pass
            old_pass = r["seconds"].get("old_logprobs")
            train_flops = flops * 4 / 3 if old_pass is not None else flops
            row["train_mfu"] = train_flops / (r["seconds"]["update"] + (old_pass or 0.0)) / peak
        rows.append(row)
    return {"setting": "shape", "shape": args.shape, "device": args.device, "prompts": args.prompts, "n": args.n,
            "tokens": args.tokens, "prompt_tokens": statistics.mean(lengths) - args.tokens,
            "model_parameters": run.mcfg.num_parameters(), "activation_checkpointing": large,
            "compile": args.compile or "eager", "peak_tflops": peak / 1e12 if peak else None, "setup_s": setup_s,
            "warmup_step_s": warm["wall_s"], "rows": rows}


def print_shape(result: dict):
    print(f"\n{result['shape']} RL step on {result['device']}: random weights, fp32 master + bf16 autocast, bf16 "
          f"rollout copy, {result['prompts']} prompts x {result['n']} samples x {result['tokens']} sampled tokens "
          f"(fixed length), prompts of {result['prompt_tokens']:.0f} tokens, {result['model_parameters'] / 1e6:,.1f}M "
          f"parameters, activation checkpointing {'on' if result['activation_checkpointing'] else 'off'}, "
          f"{result['compile']} decode; setup {result['setup_s']:.0f}s, warm-up step {result['warmup_step_s']:.1f}s")
    print("| step s | split | rollout tok/s | update tok/s | update TFLOP/s | update MFU | update+old MFU | "
          "weight sync s | peak GiB |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        split = "; ".join(f"{k} {v:.2f}s" for k, v in r["split"].items())
        mfu = (f"{r['update_mfu']:.1%} | {r['train_mfu']:.1%}" if "update_mfu" in r else "- | -")
        mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "-"
        print(f"| {r['step_s']:.2f} | {split} | {r['rollout_tokens_per_s']:.0f} | {r['update_tokens_per_s']:.0f} | "
              f"{r['update_tflops']:.3g} | {mfu} | {r['weight_sync_s']:.3f} | {mem} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, both sides (default 1: on a shared machine, 2 threads made both sides' "
                             "tiny-model steps several times slower, OpenMP threads waiting on a busy core)")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the timed ones, each side")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, each side (medians are reported)")
    parser.add_argument("--prompts", type=int, default=4, help="toy/shape: prompts per step (P)")
    parser.add_argument("--n", type=int, default=8, help="toy/shape: samples per prompt")
    parser.add_argument("--tokens", type=int, default=128, help="toy/shape: sampled tokens per trajectory (N)")
    parser.add_argument("--sft-steps", type=int, default=20, help="toy: SFT steps of the starting model")
    parser.add_argument("--no-toy", action="store_true", help="skip the toy setting")
    parser.add_argument("--no-trl", action="store_true", help="litere only, even where trl is installed")
    parser.add_argument("--model", help="agent: the demo's SFT model (e.g. runs/demo/sft/final)")
    parser.add_argument("--questions", help="agent: its questions (e.g. runs/demo/world/train_questions.jsonl)")
    parser.add_argument("--agent-prompts", type=int, default=0,
                        help="agent: prompts per step, a seeded sample of the file used every step (default: "
                             "configs/demo_rl.toml's)")
    parser.add_argument("--agent-trl", action="store_true",
                        help="agent: also run TRL's GRPOTrainer with its tool loop (environment_factory)")
    parser.add_argument("--shape", choices=sorted(PRESETS), help="one RL step of this preset's shape, random weights")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="shape: the device")
    parser.add_argument("--compile", choices=("default", "reduce-overhead"),
                        help="toy/shape: compile litere's decode step (TRL's generate is always eager: its "
                             "GenerationConfig sets disable_compile)")
    parser.add_argument("--question-words", type=int, default=40, help="shape: words per synthetic question")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.questions):
        parser.error("--model and --questions go together (the agent setting)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_rl: --device cuda, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)

    results = {"benchmark": "rl", "machine": machine(args.device), "settings": []}
    print(describe(results["machine"]), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        work = Path(tmp)
        jobs = ([("toy", run_toy, print_toy)] if not args.no_toy else []) + \
               ([("agent", run_agent, print_agent)] if args.model else []) + \
               ([("shape", run_shape, print_shape)] if args.shape else [])
        if not jobs:
            parser.error("nothing to run: --no-toy without --model or --shape")
        for name, job, _ in jobs:
            (work / name).mkdir()
            results["settings"].append(job(args, work / name))
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    print("\n" + describe(results["machine"]))
    for (_, _, show), result in zip(jobs, results["settings"]):
        show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
