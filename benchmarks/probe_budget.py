"""The RL run's greedy held-out probe with the rollouts' response budget and with its own shorter one
(`probe_max_response_tokens`), interleaved, on a finished main job: the RL start model and the RL model, the
probe's questions, configs/demo_rl.toml's settings. Prints each probe's seconds and accuracies, whether every
question scored the same under both budgets, and the longest correct trajectory of the main job's held-out
evaluations (what a budget must leave room for).

    python benchmarks/probe_budget.py [--demo runs/demo] [--budgets 2048,1024] [--repeats 2] [--threads 2]

The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import demo, run_config  # noqa: E402
from litere.agent import read_trajectories  # noqa: E402
from litere.evaluation import evaluate  # noqa: E402
from litere.questions import Environments, load_questions  # noqa: E402
from litere.rl.config import RLConfig  # noqa: E402
from litere.rl.rollouts import agent_config, make_sampler  # noqa: E402
from litere.sampler import SamplingParams  # noqa: E402
from litere.tokenizer import Tokenizer  # noqa: E402
from litere.weights import load_model  # noqa: E402


def probe(model, tokenizer, questions, cfg: RLConfig, budget: int) -> tuple[float, dict, list[float]]:
    """Seconds, accuracy per data_source and each question's reward of one greedy probe (as litere/rl/loop.py)."""
    greedy = SamplingParams(temperature=0.0, stop_token_ids=tokenizer.stop_token_ids)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = evaluate(model, tokenizer, questions, Environments(None), 1, params=greedy, out_dir=out,
                          config=agent_config(cfg, "eval", budget), sampler=make_sampler(model, cfg, tokenizer))
        seconds = time.perf_counter() - start
        rewards = [t.reward for t in read_trajectories(Path(out) / "trajectories.jsonl")]
    accuracy = {src: acc["avg@k"] for src, acc in report["by_data_source"].items()}
    return seconds, accuracy, rewards


def longest_correct(demo_dir: Path) -> dict[str, int]:
    """The longest correct trajectory (response tokens) of each held-out evaluation in the demo directory."""
    out = {}
    for path in sorted(demo_dir.glob("eval*/held_out/trajectories.jsonl")):
        lengths = [len(t.response_ids) for t in read_trajectories(path) if t.reward > 0]
        out[path.parent.parent.name] = max(lengths, default=0)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=REPO / "runs" / "demo", help="a finished main job's directory")
    parser.add_argument("--budgets", default="2048,1024", help="response budgets, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="probes of each model and budget, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="the RL stage's threads (the demo: the machine's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    probe_path = demo.probe_file(args.demo, args.demo / "world", demo.PROFILES["full"].probe_questions)
    cfg = run_config.load(RLConfig, REPO / "configs" / "demo_rl.toml",
                          [f"model={json.dumps(str(args.demo / 'sft' / 'pre_decay'))}",
                           f"system_prompt={json.dumps(str(args.demo / 'data' / 'system_prompt.txt'))}"])
    questions = load_questions(probe_path)
    rows = []
    for name in ("sft/" + demo.PROFILES["full"].rl_start, "rl/final"):
        model_dir = args.demo / name
        model, tokenizer = load_model(model_dir, dtype=torch.float32).eval(), Tokenizer.from_dir(model_dir)
        seconds = {b: [] for b in budgets}
        accuracy, rewards = {}, {b: [] for b in budgets}
        for _ in range(args.repeats):
            for budget in budgets:
                s, accuracy[budget], scored = probe(model, tokenizer, questions, cfg, budget)
                seconds[budget].append(s)
                rewards[budget].append(scored)
        reference = rewards[budgets[0]][0]
        for budget in budgets:
            row = {"model": name, "budget": budget, "median_s": round(statistics.median(seconds[budget]), 1),
                   "seconds": [round(s, 1) for s in seconds[budget]],
                   "accuracy": {k: round(v, 3) for k, v in sorted(accuracy[budget].items())},
                   "same_rewards_as_first_budget": all(r == reference for r in rewards[budget])}
            rows.append(row)
            print(f"{name:16s} budget {budget:5d}: {row['median_s']:6.1f} s (median of {args.repeats}), "
                  f"accuracy {row['accuracy']}, every question scored as with {budgets[0]}: "
                  f"{row['same_rewards_as_first_budget']}", flush=True)
    longest = longest_correct(args.demo)
    print(f"longest correct held-out trajectory (response tokens) per evaluation: {longest}")
    print(json.dumps({"threads": args.threads, "questions": len(questions), "rows": rows,
                      "longest_correct": longest}))


if __name__ == "__main__":
    main()
