"""The main job's five evaluations (SFT model: held-out and training questions; RL's start: held-out; RL model:
held-out and training questions) run one after another on a finished demo directory, two ways, interleaved: with
workers started for each evaluation (as before), and with one pool of workers kept from the first evaluation to the
last (`WorkerPool`, what `python -m litere.demo` does now). Prints the seconds of each evaluation, the total, and
whether every evaluation's trajectories are token for token the same both ways.

    python benchmarks/demo_eval_pool.py [--demo runs/demo] [--processes 2] [--repeats 2]

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

from litere import demo  # noqa: E402
from litere.agent import WorkerPool, read_trajectories  # noqa: E402


def evaluations(run: Path) -> list[tuple[str, Path, Path, list]]:
    """(name, model, question file, questions) of the main job's evaluations, in its order."""
    profile = demo.PROFILES["full"]
    held_file, seen_file = run / "world" / "eval_questions.jsonl", run / "world" / "train_questions.jsonl"
    held = demo.sample_questions(held_file, profile.held_out_questions)
    seen = demo.sample_questions(seen_file, profile.training_questions)
    sft, start, rl = run / "sft" / "final", run / "sft" / profile.rl_start, run / "rl" / "final"
    return [("sft-held_out", sft, held_file, held), ("sft-training", sft, seen_file, seen),
            ("start-held_out", start, held_file, held), ("rl-held_out", rl, held_file, held),
            ("rl-training", rl, seen_file, seen)]


def run_all(out: Path, jobs, processes: int, pool: WorkerPool | None) -> dict[str, float]:
    seconds = {}
    for name, model, question_file, questions in jobs:
        start = time.perf_counter()
        demo.run_eval(name, out, model, question_file, questions, greedy=True, compile="default",
                      processes=processes, pool=pool)
        seconds[name] = time.perf_counter() - start
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=REPO / "runs" / "demo", help="a finished main job's directory")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each way, interleaved; medians")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    jobs = evaluations(args.demo)
    root = Path(tempfile.mkdtemp(prefix="demo_eval_pool-"))
    ways = ("workers per evaluation", "a kept pool")
    seconds = {way: [] for way in ways}
    for repeat in range(args.repeats):
        for way in ways:
            out = root / f"{way.replace(' ', '-')}-{repeat}"
            if way == "a kept pool":
                with WorkerPool(args.processes) as pool:
                    seconds[way].append(run_all(out, jobs, args.processes, pool))
            else:
                seconds[way].append(run_all(out, jobs, args.processes, None))
    same = all(
        [(t.question_id, t.response_ids) for t in read_trajectories(root / f"{way.replace(' ', '-')}-{r}" / name
                                                                    / "trajectories.jsonl")]
        == [(t.question_id, t.response_ids) for t in read_trajectories(root / "workers-per-evaluation-0" / name
                                                                       / "trajectories.jsonl")]
        for way in ways for r in range(args.repeats) for name, *_ in jobs)
    names = [name for name, *_ in jobs]
    medians = {way: {name: statistics.median(run[name] for run in seconds[way]) for name in names} for way in ways}
    print(f"\n{args.processes} processes of 1 thread, {args.repeats} runs of each way, medians (s):")
    print("| evaluation | " + " | ".join(ways) + " |\n|---|" + "---:|" * len(ways))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{medians[way][name]:.1f}" for way in ways) + " |")
    totals = {way: statistics.median(sum(run.values()) for run in seconds[way]) for way in ways}
    print("| all five | " + " | ".join(f"{totals[way]:.1f}" for way in ways) + " |")
    print(f"speed-up of the five: {totals[ways[0]] / totals[ways[1]]:.2f}x; same trajectories: {same}")
    print(json.dumps({"processes": args.processes, "repeats": args.repeats, "seconds": seconds, "medians": medians,
                      "totals": totals, "same_trajectories": same}))


if __name__ == "__main__":
    main()
