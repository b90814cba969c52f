"""The demo's curriculum filter (its stage of `python -m litere.demo`: RL's start model, the seeded sample of
training questions x 8 samples, the rollout settings of configs/demo_rl.toml), timed one after the other in one run:
in one process of --threads threads with every trajectory in flight at once (the baseline: how the filter ran before
max_in_flight), in one process with at most max_num_seqs trajectories in flight, and in --threads processes of one
thread each with that bound (what the demo uses). Compares the pass counts, the kept questions and the
trajectories' mean lengths with the baseline's.

    python benchmarks/demo_filter_processes.py [--out runs/demo] [--threads 2] [--skip-baseline]

Needs a finished demo in --out (its world and SFT exports). The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import demo  # noqa: E402
from litere.rl import curriculum  # noqa: E402


def run(out: Path, threads: int, processes: int, directory: Path, extra: list[str]) -> tuple[float, dict, str]:
    profile = demo.PROFILES["full"]
    start = out / "sft" / profile.rl_start
    cfg = demo.filter_config(out, profile, start, [f"threads={threads}", *extra], processes)
    cfg = dataclasses.replace(cfg, out_dir=str(directory), questions=[str(directory / "questions.jsonl")])
    directory.mkdir(parents=True)
    sample = demo.sample_per_type(out / "world" / "train_questions.jsonl", dict(profile.filter_questions), seed=1)
    demo.write_questions(directory / "questions.jsonl", sample)
    began = time.perf_counter()
    curriculum.run_filter(cfg)
    return time.perf_counter() - began, curriculum.read_passes(directory), (directory / "kept.jsonl").read_text()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="the demo's output directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-baseline", action="store_true", help="leave out the run with every trajectory in "
                        "flight (the slowest); the bounded one-process run is then the reference")
    args = parser.parse_args(argv)
    for path in (args.out / "sft" / demo.PROFILES["full"].rl_start / "config.json", args.out / "world"):
        if not path.exists():
            raise SystemExit(f"demo_filter_processes: {path} does not exist (run `python -m litere.demo` first)")
    scratch = Path(tempfile.mkdtemp(prefix="demo_filter_processes-"))
    every = len(demo.sample_per_type(args.out / "world" / "train_questions.jsonl",
                                     dict(demo.PROFILES["full"].filter_questions), seed=1)) * 8
    settings = [("1 process, every trajectory in flight", 1, [f"max_in_flight={every}"]),
                ("1 process, max_num_seqs in flight", 1, []),
                (f"{args.threads} processes of 1 thread, max_num_seqs in flight each", args.threads, [])]
    rows = []
    for label, processes, extra in settings[1:] if args.skip_baseline else settings:
        seconds, passes, kept = run(args.out, args.threads, processes, scratch / str(len(rows)), extra)
        reference = rows[0] if rows else {"seconds": seconds, "passes": passes, "kept": kept}
        rows.append({"setting": label, "seconds": seconds, "passes": passes, "kept": kept})
        same = sum(passes[q]["correct"] == reference["passes"][q]["correct"] for q in passes)
        whole = sum(passes[q] == reference["passes"][q] for q in passes)
        print(f"{label}: {seconds:.1f} s ({reference['seconds'] / seconds:.2f}x); pass counts equal to the first "
              f"row's for {same} of {len(passes)} questions, whole records (with mean lengths) for {whole}; kept "
              f"questions {'equal' if kept == reference['kept'] else 'DIFFER'}", flush=True)
    first = rows[0]
    print(json.dumps({"threads": args.threads, "rows": [
        {"setting": r["setting"], "seconds": round(r["seconds"], 1),
         "speedup": round(first["seconds"] / r["seconds"], 2),
         "same_correct_counts": sum(r["passes"][q]["correct"] == first["passes"][q]["correct"] for q in r["passes"]),
         "same_kept": r["kept"] == first["kept"]} for r in rows]}))


if __name__ == "__main__":
    main()
