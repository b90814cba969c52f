"""The demo's RL update under two settings, timed in turn, on one step of a finished main job's own trajectories.

`--compare precision`: fp32 against bf16 autocast (why the demo's RL stays in fp32 on CPUs with bf16 instructions).
`--compare compile`: fp32 with eager blocks against `compile_blocks = true` (torch.compile of each block's work
around attention, litere/model.py; why the RL update keeps eager blocks).

Every trajectory of the step (none dropped), packed as configs/demo_rl.toml packs them, the sampled tokens' logprobs
and entropies at the sampling temperature (litere.rl.batch.sampled_logprobs, what the update computes; the entropies
without a backward, as with the demo's `entropy_coef = 0`), backward, gradients cleared; the two settings alternate,
so load from other processes hits both alike. The first round of each is a warm-up (and holds the compiling).

    python benchmarks/rl_update_speed.py [--compare precision|compile] [--demo runs/demo] [--step 1] [--repeats 4]
                                         [--threads 2] [--model DIR]

The packing and the temperature are the run's own (DEMO/rl/config.toml); the model is the one RL started from
(DEMO/sft/pre_decay unless --model names another).

The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import demo, run_config  # noqa: E402
from litere.agent.trajectory import Trajectory  # noqa: E402
from litere.rl import batch as batching  # noqa: E402
from litere.rl.config import RLConfig  # noqa: E402
from litere.viewer import read_records  # noqa: E402
from litere.weights import load_model  # noqa: E402

# per comparison: the baseline first; each setting is (blocks compiled, bf16 autocast)
SETTINGS = {"precision": {"fp32": (False, False), "bf16": (False, True)},
            "compile": {"eager": (False, False), "compiled": (True, False)}}


def update_seconds(model, samples, micros, temperature: float, bf16: bool) -> float:
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    for members in micros:
        mb = batching.micro_batch(samples, members, "cpu")
        with precision:
            logprobs, _ = batching.sampled_logprobs(model, mb, temperature, entropy=True)
        logprobs.mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=sorted(SETTINGS), default="precision")
    parser.add_argument("--demo", type=Path, default=REPO / "runs" / "demo", help="a finished main job's directory")
    parser.add_argument("--step", type=int, default=1, help="whose trajectories (rl/rollouts/step_N.jsonl.gz)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="the RL run's start (default: DEMO/sft/pre_decay)")
    args = parser.parse_args(argv)
    dump = args.demo / "rl" / "rollouts" / f"step_{args.step}.jsonl.gz"
    settings = args.demo / "rl" / "config.toml"
    start = args.model or args.demo / "sft" / demo.PROFILES["full"].rl_start
    for path in (dump, settings, start / "config.json"):
        if not path.is_file():
            raise SystemExit(f"rl_update_speed: {path} does not exist (run `python -m litere.demo` first)")
    if args.repeats < 2:
        raise SystemExit("rl_update_speed: --repeats must be at least 2 (the first round is a warm-up)")
    torch.set_num_threads(args.threads)
    cfg = run_config.load(RLConfig, settings)
    models = {}
    for name, (compiled, _) in SETTINGS[args.compare].items():
        models[name] = load_model(start, dtype=torch.float32).train()
        if compiled:
            models[name].compile_blocks()
    samples = [batching.to_sample(Trajectory.from_dict(record)) for _, record in read_records(dump)]
    samples = [s for s in samples if s.num_loss_tokens]
    micros = batching.pack(samples, list(range(len(samples))), cfg.pack_tokens)
    tokens = sum(s.num_tokens for s in samples)
    print(f"{len(samples)} trajectories, {tokens:,} tokens in {len(micros)} micro-batches of up to "
          f"{cfg.pack_tokens:,}; {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    seconds = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, (_, bf16) in SETTINGS[args.compare].items():
            seconds[name].append(update_seconds(models[name], samples, micros, cfg.temperature, bf16))
    median = {name: statistics.median(times[1:]) for name, times in seconds.items()}
    base, other = seconds
    print(f"| {args.compare} | seconds per round (first: warm-up) | median | tokens/s | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name, times in seconds.items():
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in times)} | {median[name]:.1f} | "
              f"{tokens / median[name]:,.0f} | {median[base] / median[name]:.2f}× |")
    print(json.dumps({"compare": args.compare, "trajectories": len(samples), "tokens": tokens,
                      "threads": args.threads, "seconds": {k: [round(t, 2) for t in v] for k, v in seconds.items()},
                      f"{other}_vs_{base}": round(median[base] / median[other], 3)}))


if __name__ == "__main__":
    main()
