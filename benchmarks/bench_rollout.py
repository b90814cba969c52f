"""Rollout throughput: the agent's overlapped, continuously batched loop vs running each trajectory alone.

Workload: the mini world's evaluation questions, Q questions x n = 8 samples (the GRPO shape; 4 x 8 = 32 trajectories
in flight), the `tiny` preset (random weights, fp32, the world's BPE vocabulary) in the real sampler, the real
embedded environment, the training system prompt. A random model never calls a tool, so the policy replays the
teacher trajectories of the world: the real sampler decodes exactly as many tokens per turn as the teacher's turn
has (stop tokens off), then the teacher's tokens stand in for the sampled ones. The sampler's work (prefill, decode,
extend with the real tool responses) is therefore that of a policy that searches, visits and answers, and every
trajectory ends with the teacher's (correct) answer through the real tools.

Modes, each at several tool latencies (the embedded store, ~ms; +150 ms per call, the paper's local services; +1.5 s,
the low end of its online ones):
  alone       one trajectory at a time, tools blocking (max_concurrent=1)
  batched     all trajectories in the sampler, but decoding waits whenever a tool call is running
  overlapped  the agent: tool calls run in the pool while the others keep decoding
`alone` runs on the first `--alone` trajectories only (it is slow) and rates are compared per trajectory.

    python benchmarks/bench_rollout.py [--quick] [--questions 4] [--n 8] [--alone 4] [--latencies 0,0.15,1.5]
                                        [--repeats 3] [--threads 1] [--system-prompt FILE] [--compile default]
Prints a table, then one JSON line.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litere.agent import Agent, AgentConfig  # noqa: E402
from litere.bpe import train_tokenizer  # noqa: E402
from litere.config import ModelConfig  # noqa: E402
from litere.env import open_env  # noqa: E402
from litere.model import Qwen3  # noqa: E402
from litere.questions import load_questions  # noqa: E402
from litere.reward import ExactMatchJudge, score_trajectories  # noqa: E402
from litere.sampler import Sampler, SamplingParams  # noqa: E402
from litere.tokenizer import SYSTEM_PROMPT  # noqa: E402
from litere.world import BuildConfig, build, training_texts  # noqa: E402


class ReplaySampler:
    """The real sampler, with the teacher's tokens standing in for the sampled ones (same count per turn)."""

    def __init__(self, sampler: Sampler, scripts: dict[tuple, list[list[int]]]):
        self.sampler, self.scripts = sampler, scripts
        self.max_seq_len = sampler.max_seq_len
        self._turn: dict[int, list] = {}  # request -> [script, turn index]

    @staticmethod
    def _params(params, turn: list[int]):
        return dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, len(turn)), stop_token_ids=())

    def add(self, prompt_ids, params, *, n=1, resumable=False):
        script = self.scripts[tuple(prompt_ids)]
        rids = self.sampler.add(prompt_ids, self._params(params, script[0]), n=n, resumable=resumable)
        for rid in rids:
            self._turn[rid] = [script, 0]
        return rids

    def step(self):
        outputs = self.sampler.step()
        for out in outputs:
            script, turn = self._turn[out.request_id]
            out.token_ids = script[turn][:len(out.token_ids)]
            if len(out.token_ids) == len(script[turn]):  # the teacher's turn is complete, <|im_end|> included
                out.finish_reason = "stop"
        return outputs

    def extend(self, request_id, token_ids, params=None):
        state = self._turn[request_id]
        state[1] += 1
        script, turn = state
        self.sampler.extend(request_id, token_ids, self._params(params, script[min(turn, len(script) - 1)]))

    def release(self, request_id):
        del self._turn[request_id]
        self.sampler.release(request_id)

    def has_work(self):
        return self.sampler.has_work()


class SlowEnv:
    """The embedded environment plus a fixed service latency per call."""

    def __init__(self, env, delay: float):
        self.env, self.delay = env, delay

    def search(self, queries, mask_url=None):
        time.sleep(self.delay)
        return self.env.search(queries, mask_url=mask_url)

    def visit(self, urls, goal):
        time.sleep(self.delay)
        return self.env.visit(urls, goal)


MODES = ("alone", "batched", "overlapped")


class BlockingAgent(Agent):
    """Decoding stops while any tool call runs (no overlap between tools and the sampler)."""

    def _collect_tools(self, block):
        while self._tools:
            super()._collect_tools(block=True)


def prepare(work: Path, n_questions: int, system: str):
    build(BuildConfig(seed=0, worlds=1, trajectories=20, eval_questions=max(8, n_questions), workers=1), work,
          log=None)
    tokenizer = train_tokenizer(training_texts(work), 1024)
    questions = load_questions(work / "eval_questions.jsonl")[:n_questions]
    rows = {json.loads(line)["id"]: json.loads(line) for line in (work / "eval_sft.jsonl").read_text().splitlines()}
    scripts = {}
    for q in questions:
        turns = [m["content"].removeprefix("<think>\n") for m in rows[q.id]["messages"] if m["role"] == "assistant"]
        scripts[tuple(tokenizer.prompt_ids(q.question, system))] = [tokenizer.encode(t) + [tokenizer.im_end_id]
                                                            for t in turns]
    torch.manual_seed(0)
    model = Qwen3(ModelConfig.preset("tiny").replace(vocab_size=tokenizer.vocab_size)).eval()
    model.init_weights()
    return tokenizer, questions, scripts, model, open_env(work / "eval.db")


def run_mode(mode, model, tokenizer, scripts, env, questions, n, cache_tokens, system, compile=None):
    sampler = ReplaySampler(Sampler(model, max_cache_tokens=cache_tokens, seed=0, compile=compile), scripts)
    config = AgentConfig(max_turns=40, max_response_tokens=8192, max_concurrent=1 if mode == "alone" else None,
                         system_prompt=system)
    cls = BlockingAgent if mode == "batched" else Agent
    agent = cls(sampler, tokenizer, env, SamplingParams(temperature=1.0), config)
    start, cpu_start = time.perf_counter(), time.process_time()
    trajectories = agent.run(questions, n=n)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    score_trajectories(trajectories, ExactMatchJudge())
    calls = [c for t in trajectories for c in t.tool_calls]
    return {"mode": mode, "trajectories": len(trajectories), "wall_s": wall,
            "traj_per_min": 60 * len(trajectories) / wall, "cpu_s_per_traj": cpu / len(trajectories),
            "sampled_tok_s": sum(t.sampled_tokens for t in trajectories) / wall,
            "all_tok_s": sum(len(t.response_ids) for t in trajectories) / wall,
            "tool_calls_s": len(calls) / wall,
            "tool_latency_ms": 1e3 * statistics.mean(c.latency_s for c in calls) if calls else 0.0,
            "answered_correctly": sum(t.reward for t in trajectories) / len(trajectories),
            "terminations": sorted({t.termination for t in trajectories})}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 questions x 4 samples, 2 alone, latency 0.15 only")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="samples per question")
    parser.add_argument("--alone", type=int, default=4, help="trajectories run alone (the slow baseline)")
    parser.add_argument("--latencies", default="0,0.15,1.5",
                        help="extra seconds per tool call, comma-separated (0.15: the paper's local services; "
                             "1.5: the low end of its online ones)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode (the median is reported)")
    parser.add_argument("--cache-tokens", type=int, default=131072)
    parser.add_argument("--system-prompt", metavar="FILE", help="system prompt text (default: the training one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (a tiny model gains nothing from more; 0: torch's default)")
    parser.add_argument("--compile", choices=("default",), help="the sampler's compiled decode step (compiled once, "
                        "before the timed runs)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.questions, args.n, args.alone, args.latencies = 2, 4, 2, "0.15"
    if args.threads:
        torch.set_num_threads(args.threads)
    latencies = [float(x) for x in args.latencies.split(",")]
    system = Path(args.system_prompt).read_text() if args.system_prompt else SYSTEM_PROMPT

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, questions, scripts, model, env = prepare(Path(tmp), args.questions, system)
        prompt_tokens = statistics.mean(len(k) for k in scripts)
        sampled = statistics.mean(sum(len(t) for t in s) for s in scripts.values())
        if args.compile:  # compile outside the timed runs
            run_mode("overlapped", model, tokenizer, scripts, env, questions[:2], 2, args.cache_tokens, system,
                     args.compile)
        load_before = os.getloadavg()[0]
        runs: dict[tuple, list[dict]] = {(delay, mode): [] for delay in latencies for mode in MODES}
        for repeat in range(args.repeats):  # interleaved, so that drifting contention hits every mode alike
            for delay, mode in runs:
                tool_env = SlowEnv(env, delay) if delay else env
                qs, n = (questions[:args.alone], 1) if mode == "alone" else (questions, args.n)
                run = run_mode(mode, model, tokenizer, scripts, tool_env, qs, n, args.cache_tokens, system,
                               args.compile)
                runs[(delay, mode)].append(run)
                print(f"  [{repeat + 1}/{args.repeats}] {mode:10s} delay {delay:.2f}s: {run['traj_per_min']:.1f} "
                      f"traj/min ({run['wall_s']:.1f}s)", file=sys.stderr, flush=True)
        rows = [{"tool_delay_s": delay, **sorted(r, key=lambda x: x["traj_per_min"])[len(r) // 2]}
                for (delay, _), r in runs.items()]
        load_after = os.getloadavg()[0]

    for row in rows:
        alone = next(r for r in rows if r["tool_delay_s"] == row["tool_delay_s"] and r["mode"] == "alone")
        row["speedup_vs_alone"] = row["traj_per_min"] / alone["traj_per_min"]
    cpu = (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
           f"{'compiled' if args.compile else 'eager'} decode step")
    print(f"\nRollout throughput, tiny preset (fp32, random weights, vocab {tokenizer.vocab_size}), mini world, "
          f"{args.questions} questions x {args.n} samples in flight; prompt {prompt_tokens:.0f} tokens, "
          f"{sampled:.0f} sampled tokens per trajectory; {cpu}; load average {load_before:.1f} -> {load_after:.1f}")
    print(f"median of {args.repeats} interleaved run(s) per row")
    print("| tool delay | mode | trajectories | wall s | traj/min | sampled tok/s | all tok/s | tool calls/s | "
          "tool ms | CPU s/traj | speedup vs alone |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {1e3 * r['tool_delay_s']:.0f} ms | {r['mode']} | {r['trajectories']} | {r['wall_s']:.1f} | "
              f"{r['traj_per_min']:.1f} | {r['sampled_tok_s']:.0f} | {r['all_tok_s']:.0f} | {r['tool_calls_s']:.1f} | "
              f"{r['tool_latency_ms']:.1f} | {r['cpu_s_per_traj']:.2f} | {r['speedup_vs_alone']:.1f}x |")
    result = {"benchmark": "rollout", "machine": cpu, "load_average": [load_before, load_after],
              "repeats": args.repeats, "questions": args.questions, "n": args.n, "alone": args.alone, "prompt_tokens": prompt_tokens,
              "sampled_tokens_per_trajectory": sampled, "rows": rows,
              "overlapped_speedup": {str(r["tool_delay_s"]): r["speedup_vs_alone"] for r in rows
                                     if r["mode"] == "overlapped"},
              "goal_speedup": 4.0}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
