"""The main job's RL stage with other seeds: how much of its gain is the seed's draw?

Each seed reruns the RL stage of `python -m litere.demo` (configs/demo_rl.toml, through litere.demo's own stage code)
from the same start (the demo's `sft/pre_decay`) on the same filtered questions (`filter/kept.jsonl`) with
`seed=N`, which changes the order the questions are drawn in and every sample's random numbers. Then the RL model is
evaluated as the demo evaluates it (greedy, the 360 held-out questions). Run `python -m litere.demo` first; seed 0
is that run's own RL stage. One seed per process, so that two can run side by side with a thread each:

    python benchmarks/rl_seeds.py --seed 1 --threads 1 & python benchmarks/rl_seeds.py --seed 2 --threads 1
    python benchmarks/rl_seeds.py --table        # every finished seed, seed 0 from the demo's own directories

A seed's RL run and evaluation go to DEMO/rl-seedN and DEMO/eval-rl-seedN (reused when finished, resumed when
interrupted). The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import demo  # noqa: E402

TYPES = ("direct", "2-hop", "3-hop")


def directories(out: Path, seed: int) -> tuple[Path, Path]:
    suffix = "" if seed == 0 else f"-seed{seed}"
    return out / f"rl{suffix}", out / f"eval-rl{suffix}"


def run_seed(out: Path, seed: int, threads: int) -> dict:
    profile = demo.PROFILES["full"]
    start, kept = out / "sft" / profile.rl_start, out / "filter" / "kept.jsonl"
    world = out / "world"
    for path in (start / "config.json", kept, world / "eval_questions.jsonl"):
        if not path.is_file():
            raise SystemExit(f"rl_seeds: {path} does not exist (run `python -m litere.demo` first)")
    torch.set_num_threads(threads)
    rl_dir, eval_dir = directories(out, seed)
    probe = demo.probe_file(out, world, profile.probe_questions)
    cfg = demo.rl_config(out, profile, start, kept, probe,
                         [f"seed={seed}", f"threads={threads}", f"run_dir={json.dumps(str(rl_dir))}"])
    model = demo.run_rl(cfg, demo.rl_inputs(start, kept.parent, cfg, probe))
    if model is None:
        raise SystemExit(f"rl_seeds: seed {seed}: the RL run stopped early; rerun to continue it")
    held_file = world / "eval_questions.jsonl"
    questions = demo.sample_questions(held_file, profile.held_out_questions)
    demo.run_eval("held_out", eval_dir, model, held_file, questions, greedy=True,
                  context_tokens=profile.eval_context_tokens, compile=profile.eval_compile,
                  label=f"eval after RL, seed {seed}")
    return row(out, seed)


def row(out: Path, seed: int) -> dict | None:
    rl_dir, eval_dir = directories(out, seed)
    report = eval_dir / "held_out" / "report.json"
    if not report.is_file():
        return None
    held_out = json.loads(report.read_text())
    accuracy = demo.accuracy_by_type(held_out)
    steps = [json.loads(line) for line in (rl_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_mean"] for r in steps if "reward_mean" in r]
    return {"seed": seed, **{kind: accuracy[kind]["accuracy"] for kind in TYPES},
            "well_formed": held_out["well_formed"], "reward_first": rewards[0], "reward_last": rewards[-1],
            "step_s": statistics.median(r["step_s"] for r in steps if "step_s" in r)}


def table(out: Path) -> list[dict]:
    start_report = out / f"eval-{demo.PROFILES['full'].rl_start}" / "held_out" / "report.json"
    if not start_report.is_file():
        raise SystemExit(f"rl_seeds: {start_report} does not exist (run `python -m litere.demo` first)")
    start = json.loads(start_report.read_text())
    base = demo.accuracy_by_type(start)
    rows = [r for r in (row(out, seed) for seed in range(100)) if r is not None]
    print(f"RL's start (sft/{demo.PROFILES['full'].rl_start}): held out "
          + " / ".join(f"{base[kind]['accuracy']:.1%}" for kind in TYPES)
          + f" (direct / 2-hop / 3-hop), {start['well_formed']:.1%} of its trajectories well formed")
    print("| seed | held-out direct | 2-hop | 3-hop | direct and 2-hop gain (points) | well formed | "
          "reward step 1 → last | s a step |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        gains = [100 * (r[kind] - base[kind]["accuracy"]) for kind in ("direct", "2-hop")]
        print(f"| {r['seed']} | {r['direct']:.1%} | {r['2-hop']:.1%} | {r['3-hop']:.1%} | "
              f"{gains[0]:+.1f} / {gains[1]:+.1f} | {r['well_formed']:.1%} | "
              f"{r['reward_first']:.3f} → {r['reward_last']:.3f} | {r['step_s']:.1f} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / "demo"), help="the demo's output directory")
    parser.add_argument("--seed", type=int, help="the RL seed to run (0 is the demo's own run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if args.seed == 0:
        raise SystemExit("rl_seeds: seed 0 is the demo's own RL stage (`python -m litere.demo` runs it)")
    if args.seed is not None:
        run_seed(out, args.seed, args.threads)
    if args.table or args.seed is None:
        print(json.dumps(table(out)))


if __name__ == "__main__":
    main()
