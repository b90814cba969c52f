"""π_old from a no-grad pass of its own, or from the update's forward (litere/rl/loop.py, step 5 of a step).

The demo's RL stage (configs/demo_rl.toml: GRPO, one optimizer step per batch, no KL reference, no critic) runs twice
in one process, from the same model on the same questions with the same seeds: `fused` as the loop runs it (the
update's forward gives π_old and the TIS weights) and `separate` with the no-grad pass forced. Their steps alternate
(which one goes first alternates too), so load from other processes hits both alike, and after every pair of steps
the two policies must hold the same weights and the steps the same rewards, loss and TIS figures: the pass is skipped,
nothing else changes. Step 1 includes the decode step's compilation in whichever run goes first and is left out of
the medians.

    python benchmarks/bench_old_pass.py [--model runs/demo/sft/pre_decay] [--questions runs/demo/filter/kept.jsonl]
        [--steps 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import demo  # noqa: E402
from litere.rl.config import RLConfig  # noqa: E402
from litere.rl.loop import RLRun  # noqa: E402
from litere.train import distributed  # noqa: E402

COMPARED = ("reward_mean", "trained_tokens", "policy_loss", "grad_norm", "tis_weight_mean", "veto_fraction")


class SeparatePass(RLRun):
    old_from_update = False  # the no-grad pass of every step, as a step with more than one optimizer step needs


def config(args, run_dir: Path) -> RLConfig:
    """The main job's RL settings (litere.demo.rl_config) without checkpoints, probes or exports."""
    out = Path(args.out)
    overrides = {"run_dir": str(run_dir), "resume": "never", "export": False, "dump_rollouts": False,
                 "checkpoint_every": 0, "probe_every": 0, "probe_questions": [], "threads": args.threads,
                 "max_steps": args.steps, "log_every": 10**6}
    return demo.rl_config(out, demo.PROFILES["full"], Path(args.model), Path(args.questions),
                          out / "data" / "probe.jsonl", [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def step(run: RLRun) -> dict:
    start = time.perf_counter()
    record = run.train_step()
    record["wall_s"] = time.perf_counter() - start
    run.step += 1
    run.position = run.order.advance(run.position)
    return record


def check_same(a: RLRun, b: RLRun, ra: dict, rb: dict, k: int):
    for key in COMPARED:
        if abs(ra[key] - rb[key]) > 1e-6 * max(1.0, abs(ra[key])):
            raise SystemExit(f"bench_old_pass: step {k}: {key} {ra[key]} (fused) != {rb[key]} (separate)")
    for (name, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        if not torch.allclose(x, y, rtol=1e-5, atol=1e-6):
            raise SystemExit(f"bench_old_pass: step {k}: the policies' {name} differ")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / "demo"), help="the demo's output directory")
    parser.add_argument("--model", default=str(REPO / "runs" / "demo" / "sft" / "pre_decay"))
    parser.add_argument("--questions", default=str(REPO / "runs" / "demo" / "filter" / "kept.jsonl"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for path in (args.model, args.questions):
        if not Path(path).exists():
            raise SystemExit(f"bench_old_pass: {path} does not exist (run `python -m litere.demo` first)")
    env = distributed.init("cpu")
    with tempfile.TemporaryDirectory() as work:
        runs = {"fused": RLRun(config(args, Path(work) / "fused"), env),
                "separate": SeparatePass(config(args, Path(work) / "separate"), env)}
        assert runs["fused"].old_from_update and not runs["separate"].old_from_update
        rows = []
        for k in range(1, args.steps + 1):
            order = ["fused", "separate"] if k % 2 else ["separate", "fused"]
            records = {name: step(runs[name]) for name in order}
            check_same(runs["fused"], runs["separate"], records["fused"], records["separate"], k)
            rows.append({"step": k, "first": order[0], "reward": records["fused"]["reward_mean"],
                         **{f"{name}_{part}": r["seconds"].get(part, 0.0) for name, r in records.items()
                            for part in ("rollout", "old_logprobs", "update")},
                         **{f"{name}_wall": r["wall_s"] for name, r in records.items()}})
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; configs/demo_rl.toml, {args.steps} steps")
    print("| step | first | reward | fused: rollout / update / step s | separate: rollout / old pass / update / step s "
          "| separate / fused |")
    print("|---:|---|---:|---|---|---:|")
    for r in rows:
        fused = f"{r['fused_rollout']:.1f} / {r['fused_update']:.1f} / {r['fused_wall']:.1f}"
        separate = (f"{r['separate_rollout']:.1f} / {r['separate_old_logprobs']:.1f} / {r['separate_update']:.1f} / "
                    f"{r['separate_wall']:.1f}")
        print(f"| {r['step']} | {r['first']} | {r['reward']:.3f} | {fused} | {separate} | "
              f"{r['separate_wall'] / r['fused_wall']:.2f}× |")
    timed = rows[1:] or rows
    summary = {"steps_in_medians": len(timed),
               "fused_step_s": statistics.median(r["fused_wall"] for r in timed),
               "separate_step_s": statistics.median(r["separate_wall"] for r in timed),
               "old_pass_s": statistics.median(r["separate_old_logprobs"] for r in timed),
               "ratio": statistics.median(r["separate_wall"] / r["fused_wall"] for r in timed),
               "old_pass_share": statistics.median(r["separate_old_logprobs"] / r["separate_wall"] for r in timed)}
    print(f"medians over steps {timed[0]['step']}-{timed[-1]['step']}: fused {summary['fused_step_s']:.1f} s a step, "
          f"separate {summary['separate_step_s']:.1f} s (old pass {summary['old_pass_s']:.1f} s, "
          f"{summary['old_pass_share']:.0%} of its step): {summary['ratio']:.2f}× fewer seconds; the same weights, "
          "rewards, losses and TIS figures at every step")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
