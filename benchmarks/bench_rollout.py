"""Rollout throughput: the agent loop against the speed of its own decode step.

Workload `demo` (the default): the demo's trained model (`--model`, default runs/bench_rl_demo/sft_final) on its
held-out questions (`--questions` FILE, the first `--n-questions`), with the demo's evaluation settings
(litere.demo.EVAL_AGENT: eval mode, 12 turns, 3,072-token contexts, the embedded page store, DEMO_SYSTEM_PROMPT),
sampled two ways: greedy, one sample per question (the demo's evaluation), and with the RL settings (temperature 0.7,
top_p 0.95, n = 8 samples per question, on the first `--rl-questions`).

Workload `synthetic` (for GPUs, benchmarks/gpu_check.sh): random weights of a preset's shape (`--shape`), every
question a `--prompt-tokens` prompt, every turn exactly `--turn-tokens` sampled tokens that the tokenizer reads as a
search call, every tool response `--tool-tokens` tokens, `--turns` turns per trajectory.

Configurations (`--configs`; each run is a process of its own, repeats interleaved):
  eager     the demo's settings: eager sampler, 64 trajectories in flight, a pool of 16 tool threads
  compiled  the compiled decode step, tools inline (no thread hand-off), 64 in flight
  wide      as compiled, 256 in flight (the demo's cache of 64 x 3,072 tokens holds them at these lengths)
  graphs    as compiled with CUDA graphs (compile="reduce-overhead"; CUDA only)
`--baseline-src DIR` adds the `eager` configuration run with the litere (and kernels) found in DIR, e.g. a copy of
another checkout, interleaved with the others.

Per row: sampled tokens/s, trajectories/min and tool calls/s (wall clock), sampled tokens per CPU-second of the
process (CPU time: on a shared machine the less noisy measure), and the bound: the decode step's own time at each
batch size the run decoded with, times the number of steps it decoded with that batch (decode steps timed after
the run, in a fresh sampler with the same settings, at the run's mean decode context); "x bound" = wall / bound,
and the same in CPU time. "same tokens": the row's trajectories are token-identical to the first row's of its
sampling (greedy, and seeded RL samples).

`--profile` runs one greedy rollout of the first configuration and prints where its time goes (exclusive CPU time
per part: model forwards by step kind, sampling, scheduling, tokenisation, tool calls, the loop itself); `--ops`
adds torch.profiler's operator table.

    python benchmarks/bench_rollout.py [--configs eager,compiled,wide] [--repeats 3] [--n-questions 300]
        [--rl-questions 64] [--baseline-src DIR] [--profile [--ops]] [--threads 1] [--json FILE]
    python benchmarks/bench_rollout.py --workload synthetic --shape qwen3-0.6b --device cuda --dtype bf16
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "runs" / "bench_rl_demo"

CONFIGS = {
    "eager": dict(compile=None, in_flight=64, tool_workers=16),
    "compiled": dict(compile="default", in_flight=64, tool_workers=0),
    "wide": dict(compile="default", in_flight=256, tool_workers=0),
    "graphs": dict(compile="reduce-overhead", in_flight=64, tool_workers=0),
}
SAMPLINGS = {"greedy": dict(temperature=0.0), "rl": dict(temperature=0.7, top_p=0.95)}
SYNTHETIC_CALL = '<tool_call>{"name": "search", "arguments": {"query": ["synthetic"]}}</tool_call>'


# --- the synthetic workload -------------------------------------------------------------------------------------
class SyntheticTokenizer:
    """Prompts and tool responses of fixed lengths (ids drawn from a hash of their text); every turn reads as a
    search call. Ids 0 and 1 are the stop tokens, which fixed-length turns never sample."""
    im_end_id, endoftext_id = 0, 1
    stop_token_ids = (0, 1)

    def __init__(self, vocab_size: int, prompt_tokens: int, tool_tokens: int):
        self.vocab_size, self.prompt_tokens, self.tool_tokens = vocab_size, prompt_tokens, tool_tokens

    def _ids(self, text: str, n: int) -> list[int]:
        rng = random.Random(hashlib.sha256(text.encode()).digest())
        return [rng.randrange(2, self.vocab_size) for _ in range(n)]

    def encode(self, text: str) -> list[int]:
        return self._ids(text, max(1, len(text) // 4))

    def decode(self, ids) -> str:
        return SYNTHETIC_CALL

    def prompt_ids(self, question: str, system: str = "", user_prefix: str = "") -> list[int]:
        return self._ids(question, self.prompt_tokens)

    def tool_response_ids(self, text: str) -> list[int]:
        return self._ids(text, self.tool_tokens)


class SyntheticEnv:
    """Tools that answer after `delay` seconds (the tokenizer makes every response the same length)."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def search(self, queries, mask_url=None):
        if self.delay:
            time.sleep(self.delay)
        return f"results for {queries}"

    def visit(self, urls, goal):
        return self.search(urls)


class FixedTurns:
    """The sampler with every turn exactly `tokens` long and closed (finish reason "stop"), as a policy whose
    turns all end in a tool call would produce them."""

    def __init__(self, sampler, tokens: int):
        self.sampler, self.tokens, self.max_seq_len = sampler, tokens, sampler.max_seq_len

    def _fixed(self, params):
        return dataclasses.replace(params, max_new_tokens=self.tokens, stop_token_ids=())

    def add(self, prompt_ids, params, *, n=1, resumable=False):
        return self.sampler.add(prompt_ids, self._fixed(params), n=n, resumable=resumable)

    def extend(self, request_id, token_ids, params=None):
        self.sampler.extend(request_id, token_ids, params and self._fixed(params))

    def step(self):
        outputs = self.sampler.step()
        for out in outputs:
            out.finish_reason = "stop" if out.finish_reason == "length" else out.finish_reason
        return outputs

    def release(self, request_id):
        self.sampler.release(request_id)

    def has_work(self):
        return self.sampler.has_work()


# --- one run (in a worker process) ------------------------------------------------------------------------------
class Setup:
    """Model, tokenizer, environment, questions and the agent's settings of a workload."""

    def __init__(self, spec: dict):
        import torch

        from litere.agent import AgentConfig
        from litere.questions import Question

        self.spec, self.device = spec, torch.device(spec["device"])
        if spec["workload"] == "demo":
            from litere.demo import DEMO_SYSTEM_PROMPT, EVAL_AGENT
            from litere.questions import Environments, load_questions, world_env_settings
            from litere.tokenizer import Tokenizer
            from litere.weights import load_model

            self.model = load_model(spec["model"], device=self.device).eval()
            self.tokenizer = Tokenizer.from_dir(spec["model"])
            self.env = Environments(None, **world_env_settings(spec["questions_file"]))
            self.questions = load_questions(spec["questions_file"])
            self.agent_settings = {**EVAL_AGENT, "system_prompt": DEMO_SYSTEM_PROMPT}
            self.context = EVAL_AGENT["max_context_tokens"]
        else:
            from litere.config import ModelConfig
            from litere.model import Qwen3

            config = ModelConfig.preset(spec["shape"]).replace(torch_dtype="float32")
            with torch.device(self.device):
                self.model = Qwen3(config)
            self.model.init_weights(std=0.02, generator=torch.Generator(self.device).manual_seed(0))
            self.model = self.model.to(getattr(torch, spec["dtype"])).eval()
            self.tokenizer = SyntheticTokenizer(config.vocab_size, spec["prompt_tokens"], spec["tool_tokens"])
            self.env = SyntheticEnv(spec["tool_delay"])
            self.questions = [Question(f"s{i:04d}", f"synthetic question {i}", ["x"], "synthetic")
                              for i in range(spec["n_questions"])]
            turns = spec["turns"]
            self.context = spec["prompt_tokens"] + turns * (spec["turn_tokens"] + spec["tool_tokens"]) + 16
            self.agent_settings = dict(mode="train", max_turns=turns, max_response_tokens=None,
                                       max_context_tokens=self.context)
        self.config = CONFIGS[spec["config"]]
        self.agent_config = AgentConfig(**{**self.agent_settings, "max_concurrent": self.config["in_flight"],
                                           "tool_workers": self.config["tool_workers"]})

    def sampler(self):
        """A sampler as the demo builds it (a cache of 64 contexts), with the configuration's settings."""
        from litere.sampler import Sampler

        kwargs = {"compile": self.config["compile"]} if self.config["compile"] else {}
        sampler = Sampler(self.model, max_cache_tokens=64 * self.context, max_num_seqs=self.config["in_flight"],
                          stop_token_ids=self.tokenizer.stop_token_ids, seed=0, **kwargs)
        if self.spec["workload"] == "synthetic":
            return FixedTurns(sampler, self.spec["turn_tokens"])
        return sampler

    def params(self):
        from litere.sampler import SamplingParams

        return SamplingParams(**SAMPLINGS[self.spec["sampling"]], seed=0, stop_token_ids=self.tokenizer.stop_token_ids)

    def agent(self, sampler):
        from litere.agent import Agent

        return Agent(sampler, self.tokenizer, self.env, self.params(), self.agent_config)


class DecodeLog:
    """Per step of a run: how many sequences computed one token, and their context lengths (wraps the scheduler)."""

    def __init__(self, scheduler):
        self.batches: Counter = Counter()
        self.context_tokens = self.decode_rows = 0
        schedule = scheduler.schedule

        def logged():
            batch = schedule()
            single = [seq.num_cached + 1 for seq, n in batch if n == 1]
            if single:
                self.batches[len(single)] += 1
                self.decode_rows += len(single)
                self.context_tokens += sum(single)
            return batch

        scheduler.schedule = logged

    @property
    def mean_context(self) -> int:
        return round(self.context_tokens / max(1, self.decode_rows))


def decode_step_seconds(setup: Setup, batch: int, context: int, steps: int = 12) -> tuple[float, float]:
    """Median wall and CPU time of a step in which `batch` sequences of `context` tokens each decode one token."""
    from litere.sampler import SamplingParams

    sampler = setup.sampler()
    sampler = getattr(sampler, "sampler", sampler)
    params = SamplingParams(temperature=0.0, max_new_tokens=steps + 8, stop_token_ids=())
    rng = random.Random(batch)
    vocab = setup.model.config.vocab_size
    for _ in range(batch):
        sampler.add([rng.randrange(2, vocab) for _ in range(context)], params)
    while sampler.scheduler.waiting or any(len(s.tokens) - s.num_cached > 1 for s in sampler.scheduler.running):
        sampler.step()
    for _ in range(2):
        sampler.step()
    wall, cpu = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        sampler.step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(wall), statistics.median(cpu)


def decode_bound(setup: Setup, log: DecodeLog) -> dict:
    """The decode steps' own time for the run's steps: measured at powers of two up to the largest batch,
    interpolated between them, summed over the steps."""
    largest = max(log.batches)
    sizes = sorted({*(1 << i for i in range(largest.bit_length())), largest})
    context = min(log.mean_context, setup.context - 16)
    measured = {b: decode_step_seconds(setup, b, context) for b in sizes}

    def at(b, clock):
        lower = max(s for s in sizes if s <= b)
        upper = min(s for s in sizes if s >= b)
        low, high = measured[lower][clock], measured[upper][clock]
        return low if upper == lower else low + (high - low) * (b - lower) / (upper - lower)

    return {"bound_s": sum(at(b, 0) * steps for b, steps in log.batches.items()),
            "bound_cpu_s": sum(at(b, 1) * steps for b, steps in log.batches.items()), "decode_context": context,
            "decode_step_ms": {b: 1e3 * wall for b, (wall, _) in measured.items()},
            "decode_step_cpu_ms": {b: 1e3 * cpu for b, (_, cpu) in measured.items()}}


def run_worker(spec: dict) -> dict:
    if spec.get("src"):
        sys.path.insert(0, spec["src"])
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    setup = Setup(spec)
    n_questions = spec["n_questions"] if spec["sampling"] == "greedy" else spec["rl_questions"]
    n = 1 if spec["sampling"] == "greedy" else 8
    questions = setup.questions[:n_questions]
    compile_s = 0.0
    if setup.config["compile"]:  # the graphs are compiled in a warm-up run, outside the timed one
        # CUDA graphs are recorded per padded batch shape, so that warm-up keeps as many trajectories in flight as
        # the timed run (every batch size up to the full one); the CPU's dynamic graph needs only a few
        warm = setup.config["in_flight"] // n if setup.config["compile"] == "reduce-overhead" else 4
        start = time.perf_counter()
        setup.agent(setup.sampler()).run(setup.questions[-max(1, warm):], n=n)
        compile_s = time.perf_counter() - start
    sampler = setup.sampler()
    agent = setup.agent(sampler)
    log = DecodeLog(getattr(sampler, "sampler", sampler).scheduler)
    profiler = Profiler(agent, spec.get("ops", False)) if spec.get("profile") else None
    start, cpu_start = time.perf_counter(), time.process_time()
    trajectories = agent.run(questions, n=n)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    sampled = sum(t.sampled_tokens for t in trajectories)
    calls = sum(len(t.tool_calls) for t in trajectories)
    digest = hashlib.sha256(json.dumps([t.response_ids for t in trajectories]).encode()).hexdigest()[:16]
    result = {"config": spec["config"], "sampling": spec["sampling"], "src": spec.get("src"),
              "trajectories": len(trajectories), "wall_s": wall, "cpu_s": cpu, "compile_s": compile_s,
              "sampled_tokens": sampled, "forced_tokens": sum(t.tool_tokens for t in trajectories),
              "tool_calls": calls, "sampled_tok_s": sampled / wall, "traj_per_min": 60 * len(trajectories) / wall,
              "tool_calls_s": calls / wall, "sampled_tok_per_cpu_s": sampled / cpu, "steps": sum(log.batches.values()),
              "mean_decode_batch": log.decode_rows / max(1, sum(log.batches.values())),
              "trajectories_sha": digest,
              "answered": sum(t.termination == "answer" for t in trajectories) / len(trajectories)}
    if profiler:
        result["profile"] = profiler.report(wall)
    if spec.get("bound"):
        result.update(decode_bound(setup, log))
        result["x_bound"] = wall / result["bound_s"]
        result["x_bound_cpu"] = cpu / result["bound_cpu_s"]
    return result


# --- the profile ------------------------------------------------------------------------------------------------
class Profiler:
    """Exclusive CPU and wall time of the parts of a rollout: each wrapped call's time minus that of the wrapped
    calls inside it, per thread (tool calls may run in the pool's threads)."""

    def __init__(self, agent, ops: bool):
        import litere.agent.loop as loop

        self.cpu, self.wall, self.calls = defaultdict(float), defaultdict(float), Counter()
        self._stack = threading.local()
        sampler = getattr(agent.sampler, "sampler", agent.sampler)
        self._wrap(agent, "run", "agent loop (the rest)")
        self._wrap(agent, "_on_output", "agent: turn handling")
        self._wrap(agent, "_collect_tools", "agent: tool pool hand-off")
        self._wrap(sampler, "step", "sampler: step bookkeeping")
        self._wrap(sampler, "_forward", self._step_kind)  # exclusive: what a step does around its forwards
        # the forwards: the compiled graph's decoding rows, and the eager forward of the rest (with a compiled
        # decode step, the prefill chunks of a mixed step; without, every row)
        self._wrap(sampler, "_compiled_forward", "model: compiled decode graph")
        self._wrap(sampler, "_eager_forward", lambda batch: f"model: eager forward, {self._kind(batch)} rows")
        self._wrap(sampler, "_sample", "sampler: sampling")
        self._wrap(sampler, "add", "sampler: add/extend")
        self._wrap(sampler, "extend", "sampler: add/extend")
        self._wrap(sampler.scheduler, "schedule", "sampler: scheduling")
        self._wrap(agent.tokenizer, "decode", "detokenisation")
        self._wrap(agent.tokenizer, "tool_response_ids", "tokenisation")
        self._wrap(agent.tokenizer, "prompt_ids", "tokenisation")
        self._wrap(loop, "parse_tool_call", "tool calls: parsing")
        self._wrap(loop, "execute_tool", "tool calls: the store")
        self.ops = None
        if ops:
            import torch

            self.ops = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.ops.__enter__()

    @staticmethod
    def _kind(batch) -> str:
        single = sum(n == 1 for _, n in batch)
        return "decode" if single == len(batch) else "prefill" if not single else "mixed"

    @classmethod
    def _step_kind(cls, batch) -> str:
        return f"model: {cls._kind(batch)} steps, outside the forwards"

    def _wrap(self, owner, name: str, label):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            stack = self._stack.__dict__.setdefault("frames", [])
            stack.append([0.0, 0.0])  # time of the wrapped calls inside this one
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                inside_cpu, inside_wall = stack.pop()
                key = label(args[0]) if callable(label) else label
                self.cpu[key] += cpu - inside_cpu
                self.wall[key] += wall - inside_wall
                self.calls[key] += 1
                if stack:
                    stack[-1][0] += cpu
                    stack[-1][1] += wall

        setattr(owner, name, timed)

    def report(self, wall: float) -> dict:
        if self.ops is not None:
            self.ops.__exit__(None, None, None)
            print(self.ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
        return {"wall_s": wall, "parts": {k: {"cpu_s": self.cpu[k], "wall_s": self.wall[k], "calls": self.calls[k]}
                                          for k in sorted(self.cpu, key=self.cpu.get, reverse=True)}}


# --- the parent: runs, tables -----------------------------------------------------------------------------------
def spawn(spec: dict) -> dict:
    """One run in a fresh process; its last stdout line is the result."""
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                          text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"run {spec['config']}/{spec['sampling']} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    row = dict(sorted(runs, key=lambda r: r["sampled_tok_s"])[len(runs) // 2])
    row["repeats"] = len(runs)
    for key in ("sampled_tok_per_cpu_s", "x_bound", "x_bound_cpu"):
        if all(key in r for r in runs):
            row[key] = statistics.median(r[key] for r in runs)
    return row


def print_table(rows: list[dict], title: str):
    print(f"\n{title}")
    print("| sampling | configuration | trajectories | wall s | sampled tok/s | traj/min | tool calls/s | "
          "tok per CPU-s | vs first (CPU) | decode batch | bound s | x bound | x bound (CPU) | compile s | "
          "same tokens |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    firsts = {}
    for r in rows:
        first = firsts.setdefault(r["sampling"], r)
        same = "yes" if r["trajectories_sha"] == first["trajectories_sha"] else "NO"
        bound = (f"{r['bound_s']:.1f} | {r['x_bound']:.2f} | {r['x_bound_cpu']:.2f}" if "bound_s" in r
                 else "- | - | -")
        name = r["config"] + (" (baseline src)" if r.get("src") else "")
        speedup = (f"{r['sampled_tok_s'] / first['sampled_tok_s']:.2f}x "
                   f"({r['sampled_tok_per_cpu_s'] / first['sampled_tok_per_cpu_s']:.2f}x)")
        print(f"| {r['sampling']} | {name} | {r['trajectories']} | {r['wall_s']:.1f} | {r['sampled_tok_s']:.0f} | "
              f"{r['traj_per_min']:.0f} | {r['tool_calls_s']:.1f} | {r['sampled_tok_per_cpu_s']:.0f} | {speedup} | "
              f"{r['mean_decode_batch']:.1f} | {bound} | {r['compile_s']:.0f} | {same} |")


def print_profile(result: dict):
    parts = result["profile"]["parts"]
    total = sum(p["cpu_s"] for p in parts.values())
    print(f"\nWhere the time of one rollout goes ({result['config']}, {result['trajectories']} trajectories, "
          f"{result['wall_s']:.1f} s wall, {total:.1f} s CPU in the parts below; exclusive times)")
    print("| part | CPU s | share | wall s | calls | CPU ms per call |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, p in parts.items():
        print(f"| {name} | {p['cpu_s']:.2f} | {100 * p['cpu_s'] / total:.1f}% | {p['wall_s']:.2f} | {p['calls']} | "
              f"{1e3 * p['cpu_s'] / max(1, p['calls']):.3f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=("demo", "synthetic"), default="demo")
    parser.add_argument("--configs", default="eager,compiled,wide", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--samplings", default="greedy,rl", help="greedy and/or rl (temperature 0.7, n = 8)")
    parser.add_argument("--baseline-src", help="also run the eager configuration with the code in this directory")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--n-questions", type=int, default=300, help="greedy: questions (one sample each)")
    parser.add_argument("--rl-questions", type=int, default=64, help="rl: questions (8 samples each)")
    parser.add_argument("--no-bound", action="store_true", help="skip timing the decode steps for the bound")
    parser.add_argument("--profile", action="store_true", help="only the profile of one greedy rollout")
    parser.add_argument("--ops", action="store_true", help="with --profile: torch.profiler's operator table")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--model", default=str(DEMO / "sft_final"))
    parser.add_argument("--questions", default=str(DEMO / "world" / "eval_questions.jsonl"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="synthetic: the weights' dtype (bfloat16 on GPUs)")
    parser.add_argument("--shape", default="tiny", help="synthetic: the model preset")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--turn-tokens", type=int, default=128)
    parser.add_argument("--tool-tokens", type=int, default=256)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tool-delay", type=float, default=0.0, help="synthetic: seconds per tool call")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    if args.dtype in ("bf16", "fp32"):
        args.dtype = {"bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    base = {"workload": args.workload, "device": args.device, "threads": args.threads, "model": args.model,
            "questions_file": args.questions, "n_questions": args.n_questions, "rl_questions": args.rl_questions,
            "dtype": args.dtype, "shape": args.shape, "prompt_tokens": args.prompt_tokens,
            "turn_tokens": args.turn_tokens, "tool_tokens": args.tool_tokens, "turns": args.turns,
            "tool_delay": args.tool_delay, "bound": not args.no_bound}
    configs = args.configs.split(",")
    load_before = os.getloadavg()
    if args.profile:
        result = spawn({**base, "config": configs[0], "sampling": "greedy", "profile": True, "ops": args.ops,
                        "bound": False, "src": args.baseline_src})
        print_profile(result)
        print(json.dumps(result))
        return
    plan = [(sampling, config, None) for sampling in args.samplings.split(",") for config in configs]
    if args.baseline_src:
        plan = [(s, "eager", args.baseline_src) for s in args.samplings.split(",")] + plan
    runs = defaultdict(list)
    for repeat in range(args.repeats):
        for sampling, config, src in plan:
            result = spawn({**base, "config": config, "sampling": sampling, "src": src})
            runs[(sampling, config, src)].append(result)
            bound = f"{result['x_bound']:.2f}x bound, " if "x_bound" in result else ""
            print(f"  [{repeat + 1}/{args.repeats}] {sampling} {config}{' (baseline src)' if src else ''}: "
                  f"{result['sampled_tok_s']:.0f} sampled tok/s, {result['wall_s']:.1f} s, "
                  f"{result['cpu_s']:.1f} CPU s, compile {result['compile_s']:.0f} s, {bound}"
                  f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    rows = [median_run(runs[key]) for key in plan]
    load_after = os.getloadavg()
    import torch

    machine = (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads or 'default'} thread(s), "
               f"device {args.device}, load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    what = (f"demo model, {args.n_questions} held-out questions greedy / {args.rl_questions} x 8 RL samples"
            if args.workload == "demo" else
            f"synthetic {args.shape} {args.dtype}, {args.n_questions} questions greedy / {args.rl_questions} x 8 RL, "
            f"{args.prompt_tokens}-token prompts, {args.turns} turns of {args.turn_tokens} tokens, "
            f"{args.tool_tokens}-token tool responses")
    print_table(rows, f"Rollouts: {what}; {machine}; median of {args.repeats} interleaved run(s)")
    result = {"benchmark": "rollout", "workload": args.workload, "machine": machine,
              "load_average": [load_before[0], load_after[0]], "args": vars(args), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
