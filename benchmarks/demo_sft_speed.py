"""The demo's SFT on its own batches under two settings, timed in turn: which trains faster on this CPU?

`--compare precision`: fp32 against bf16 autocast. `precision = "auto"` (configs/demo_sft.toml) picks bf16 autocast on
CPUs with bf16 instructions; benchmarks/bench_sft.py times larger batches of random documents, and the demo's are
small (2,048 tokens) and score every token, so the two can disagree on which precision is faster.
`--compare compile`: the blocks eager against `compile_blocks = true` (torch.compile of each block's work around
attention, litere/model.py), both at the demo's precision.

This runs a finished main job's own SFT settings (DEMO/sft/config.toml) on its own data and tokenizer, from scratch,
for `--steps` steps under each setting, the two alternating `--repeats` times (so load from other processes hits both
alike), and reports the tokens per second of each run over its steps after the first 10 (which hold the compiling,
reported apart). The held-out probe, its decay trigger and rewarms, checkpoints and exports are off: they do not
change a training step's work.

    python benchmarks/demo_sft_speed.py [--compare precision|compile] [--demo runs/demo] [--steps 160] [--repeats 2]
                                        [--threads 2]

The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import cpu, run_config  # noqa: E402
from litere.train import sft  # noqa: E402

WARM_UP_STEPS = 10
# the settings each comparison times, the baseline first
COMPARISONS = {"precision": {"fp32": ["precision=fp32"], "bf16": ["precision=bf16"]},
               "compile": {"eager": ["compile_blocks=false"], "compiled": ["compile_blocks=true"]}}


def timed_run(demo: Path, setting: list[str], steps: int, threads: int, run_dir: Path) -> tuple[float, float]:
    """(tokens/s over the steps after the warm-up, seconds of the warm-up steps)."""
    overrides = [f"run_dir={json.dumps(str(run_dir))}", f"tokenizer={json.dumps(str(demo / 'tokenizer'))}",
                 f"train_files={json.dumps([str(demo / 'data' / 'train.jsonl')])}", "eval_files=[]",
                 f"max_steps={steps}", "decay_steps=0", "decay_when_held_out_below=0", "rewarm_when_held_out_above=0",
                 "eval_every=0", "checkpoint_every=0", "export=false", "export_before_decay=false",
                 "export_during_decay=[]", *setting, f"threads={threads}", "log_every=1000000"]
    sft.train(run_config.load(sft.SFTConfig, demo / "sft" / "config.toml", overrides))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_timed = [r for r in records if "step_s" in r]
    timed = steps_timed[WARM_UP_STEPS:]
    return (sum(r["tokens"] for r in timed) / sum(r["step_s"] for r in timed),
            sum(r["step_s"] for r in steps_timed[:WARM_UP_STEPS]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="precision")
    parser.add_argument("--demo", type=Path, default=REPO / "runs" / "demo", help="a finished main job's directory")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for path in (args.demo / "sft" / "config.toml", args.demo / "data" / "train.jsonl",
                 args.demo / "tokenizer" / "tokenizer.json"):
        if not path.is_file():
            raise SystemExit(f"demo_sft_speed: {path} does not exist (run `python -m litere.demo` first)")
    if args.steps <= WARM_UP_STEPS:
        raise SystemExit(f"demo_sft_speed: --steps must be more than the {WARM_UP_STEPS} warm-up steps")
    settings = COMPARISONS[args.compare]
    speeds, warm_up = {name: [] for name in settings}, {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="demo_sft_speed_") as scratch:
        for repeat in range(args.repeats):
            for name, setting in settings.items():
                speed, seconds = timed_run(args.demo, setting, args.steps, args.threads,
                                           Path(scratch) / f"{name}_{repeat}")
                speeds[name].append(speed)
                warm_up[name].append(seconds)
    median = {name: statistics.median(values) for name, values in speeds.items()}
    base = next(iter(settings))
    print(f"{args.threads} thread(s), {platform.processor() or platform.machine()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, precision auto: {'bf16' if cpu.has_bf16() else 'fp32'}; "
          f"{args.steps} steps a run, tokens/s over the steps after the first {WARM_UP_STEPS}")
    print(f"| {args.compare} | tokens/s per run | median | vs {base} | first {WARM_UP_STEPS} steps (s) |")
    print("|---|---|---:|---:|---|")
    for name, values in speeds.items():
        print(f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} | {median[name]:,.0f} | "
              f"{median[name] / median[base]:.2f}× | {', '.join(f'{s:.1f}' for s in warm_up[name])} |")
    other = list(settings)[1]
    print(json.dumps({"compare": args.compare, "threads": args.threads, "steps": args.steps,
                      "tokens_per_s": {k: [round(v) for v in vs] for k, vs in speeds.items()},
                      "warm_up_s": {k: [round(v, 1) for v in vs] for k, vs in warm_up.items()},
                      f"{other}_vs_{base}": round(median[other] / median[base], 3)}))


if __name__ == "__main__":
    main()
