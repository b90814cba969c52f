"""The demo's SFT recipe on several floating-point paths: does it learn on every machine?

Each variant runs `python -m litere.demo --skip-rl` (world, tokenizer, SFT, the greedy held-out and training-question
evaluations) in its own output directory, with one change to the float path: the seed (initial weights and data
order), the thread count (which could change the order of reductions; on the AMD EPYC VM of BENCHMARKS.md, 1 and 2
threads train the same model bit for bit), or the instruction set (`ATEN_CPU_CAPABILITY=avx2` with MKL and
oneDNN held to AVX2, which also stands in for an AVX2-only machine: torch then has no bf16 instructions and
`precision = "auto"` trains in fp32, as such a machine does). The world, data and tokenizer are the same for every
variant (the directory of the first is reused by the others through symbolic links).

    python benchmarks/demo_variants.py                       # every variant, one after the other
    python benchmarks/demo_variants.py --only seed1 avx2     # some of them
    python benchmarks/demo_variants.py --table               # the table of the finished ones
    python benchmarks/demo_variants.py --whole-names --out runs/variants-whole-names   # the demo's --whole-names
    python benchmarks/demo_variants.py --out runs/variants-kv4 'arch={num_key_value_heads=4}' --only seed2
                                                             # SFT overrides (before --only), for every variant
    python benchmarks/demo_variants.py --out runs/v-r3 --continue-from runs/variants --only seed7
                                                             # seed 7's run, continued under today's settings

Each variant writes OUT/<name>/report.json (the demo's report); the table gives held-out direct / 2-hop accuracy,
training-question accuracy, the steps where the lr began to decay (two after a rewarm), steps, tokens, training
minutes and tokens/s, and where the held-out direct and 2-hop trajectories went wrong (`mistakes`; among them the
2-hop answers given after a second visit whose goal asks for another relation than the question). The last line
printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere.report import decay_starts, read_metrics  # noqa: E402
from litere.world.generate import GOAL, QUESTION  # noqa: E402

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# name: (seed, threads, AVX2 emulated)
VARIANTS = {
    "seed0": (0, 2, False),
    "seed1": (1, 1, False),
    "seed2": (2, 1, False),
    "avx2": (0, 1, True),
    "avx2-threads2": (0, 2, True),
    # more paths, each trained from scratch with the recipe as it is now
    "seed3": (3, 1, False),
    "seed4": (4, 1, False),
    "seed5": (5, 1, False),
    "avx2-seed1": (1, 2, True),
    "seed6": (6, 1, False),
    "seed7": (7, 1, False),
    "seed8": (8, 1, False),
    "seed9": (9, 1, False),
    "avx2-seed2": (2, 1, True),
    "seed10": (10, 1, False),
    "avx2-seed3": (3, 1, True),
    "seed11": (11, 1, False),
    "avx2-seed4": (4, 1, True),
    "seed12": (12, 1, False),
    "avx2-seed5": (5, 1, True),
    "seed13": (13, 1, False),
    "seed14": (14, 1, False),
    "avx2-seed6": (6, 1, True),
    "seed15": (15, 1, False),
    "avx2-seed7": (7, 1, True),
    "seed16": (16, 1, False),
}
SHARED = ("world", "data", "tokenizer")


def continue_from(name: str, directory: Path, source: Path, demo_flags: list[str], overrides: list[str]):
    """DIRECTORY (its world, data and tokenizer linked to SOURCE/<name>'s) set up to continue SOURCE/<name>'s SFT run
    under the current settings: its SFT directory copied (checkpoints, metrics, log) and adopted by the demo, which
    then resumes it from its last checkpoint. Sound only where the earlier settings decided nothing differently up to
    that checkpoint."""
    from litere import demo
    earlier = source / name
    if not (earlier / "sft" / "checkpoints").is_dir():
        raise SystemExit(f"--continue-from: {earlier}/sft/checkpoints does not exist")
    if not (directory / "sft").exists():
        shutil.copytree(earlier / "sft", directory / "sft", symlinks=True)
    profile = "quick" if "--quick" in demo_flags else "short" if "--short" in demo_flags else "full"
    demo.adopt_sft_run(directory, demo.PROFILES[profile], overrides)


def run_variant(name: str, out: Path, first: Path | None, demo_flags: list[str], sft_overrides: list[str],
                source: Path | None = None) -> dict:
    seed, threads, avx2 = VARIANTS[name]
    overrides, env = [*sft_overrides, f"seed={seed}"], AVX2 if avx2 else {}
    directory = out / name
    shared_from = source / name if source is not None else first  # a continued run keeps its own world and data
    directory.mkdir(parents=True, exist_ok=True)
    if shared_from is not None and shared_from != directory:
        for stage in SHARED:
            link = directory / stage
            if not link.exists():
                link.symlink_to((shared_from / stage).resolve(), target_is_directory=True)
    if source is not None:
        continue_from(name, directory, source, demo_flags, [*overrides, f"threads={threads}"])
    command = [sys.executable, "-m", "litere.demo", "--skip-rl", *demo_flags, "--out", str(directory),
               "--threads", str(threads), *overrides]
    print(f"[variants] {name}: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env={**os.environ, **env}, check=True)
    report = json.loads((directory / "report.json").read_text())
    report["variant_seconds"] = time.perf_counter() - start
    return report


HOPS = {"world-direct": 1, "world-2hop": 2}


def _template_pattern(template: str, prefix: str = "") -> re.Pattern:
    before, after = template.split("{}")
    return re.compile(re.escape(prefix + before) + ".+" + re.escape(after) + "$")


QUESTION_PATTERNS = {relation: _template_pattern(text) for relation, text in QUESTION.items()}
GOAL_PATTERNS = {relation: _template_pattern(text, "Find ") for relation, text in GOAL.items()}


def relation_asked(text: str, patterns: dict) -> str | None:
    """The relation whose world template (a question, or a visit goal of the teacher's wording) spells `text`."""
    return next((relation for relation, pattern in patterns.items() if pattern.match(text)), None)


def mistakes(trajectories: Path) -> dict:
    """The held-out direct and 2-hop trajectories by what went wrong: a wrong answer after as many page visits as the
    question has hops (a copy error; `copy_number`: of those, the ones whose answer is a number), more visits than
    hops, or fewer; and `wrong_relation`: the wrong 2-hop trajectories whose second visit's goal asks for another
    relation than the question does (the last hop's question asked of the wrong page)."""
    counts = {"correct": 0, "copy": 0, "copy_number": 0, "more_hops": 0, "fewer_hops": 0, "wrong_relation": 0}
    for line in trajectories.read_text().splitlines():
        record = json.loads(line)
        hops = HOPS.get(record["data_source"])
        if hops is None:
            continue
        visits = [call for call in record["tool_calls"] if call["name"] == "visit"]
        kind = ("correct" if record["reward"] > 0 else "copy" if len(visits) == hops
                else "more_hops" if len(visits) > hops else "fewer_hops")
        counts[kind] += 1
        if kind == "copy" and all(answer.isdigit() for answer in record["answers"]):
            counts["copy_number"] += 1
        if kind != "correct" and hops == 2 and len(visits) >= 2:
            asked = relation_asked(record["question"], QUESTION_PATTERNS)
            sought = relation_asked(str(visits[1]["arguments"].get("goal", "")), GOAL_PATTERNS)
            counts["wrong_relation"] += asked is not None and sought != asked
    return counts


def row(name: str, report: dict, out: Path) -> dict:
    held, seen, training = report["held_out"]["accuracy"], report["training_questions"]["accuracy"], report["training"]
    seed, threads, avx2 = VARIANTS[name]
    return {"variant": name, "seed": seed, "threads": threads, "isa": "AVX2 (emulated)" if avx2 else "native",
            "direct": held["direct"]["accuracy"], "2-hop": held["2-hop"]["accuracy"],
            "training_direct": seen["direct"]["accuracy"], "training_2hop": seen["2-hop"]["accuracy"],
            "decay_starts": decay_starts(read_metrics(out / name / "sft" / "metrics.jsonl")),
            "steps": training["steps"],
            "tokens": training["tokens"], "train_minutes": training["seconds"] / 60,
            "tokens_per_s": training["tokens_per_s"], "well_formed": report["held_out"]["well_formed"],
            "mistakes": mistakes(out / name / "eval" / "held_out" / "trajectories.jsonl")}


def table(rows: list[dict]) -> str:
    lines = ["| variant | seed | threads | instructions | held-out direct | held-out 2-hop | training q. direct / 2-hop | "
             "decay from step | steps | tokens | training | tokens/s | wrong answer, right hops (a number) / more hops / "
             "fewer | wrong 2-hop, second goal asks another relation |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["mistakes"]
        lines.append(f"| {r['variant']} | {r['seed']} | {r['threads']} | {r['isa']} | {100 * r['direct']:.1f}% | "
                     f"{100 * r['2-hop']:.1f}% | {100 * r['training_direct']:.1f}% / {100 * r['training_2hop']:.1f}% | "
                     f"{', '.join(f'{d:g}' for d in r['decay_starts'])} | {r['steps']:,} | {r['tokens'] / 1e6:.2f}M | "
                     f"{r['train_minutes']:.1f} min | "
                     f"{r['tokens_per_s']:,.0f} | {m['copy']} ({m['copy_number']}) / {m['more_hops']} / "
                     f"{m['fewer_hops']} | {m['wrong_relation']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/variants")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="these variants (default: all)")
    parser.add_argument("--table", action="store_true", help="only print the table of the finished variants")
    parser.add_argument("--whole-names", action="store_true", help="the demo's --whole-names tokenizer")
    parser.add_argument("--continue-from", metavar="DIR",
                        help="continue each variant's SFT run in DIR (e.g. runs/variants) from its last checkpoint "
                             "under the current settings, in a copy under --out")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="SFT config overrides for every variant (as python -m litere.demo), before --only; "
                             "use a fresh --out")
    args = parser.parse_args(argv)
    out = (REPO / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    names = args.only or list(VARIANTS)
    if not args.table:
        first = next((out / n for n in VARIANTS if (out / n / "world" / ".stamp").is_file()), None)
        for name in names:
            run_variant(name, out, first, ["--whole-names"] if args.whole_names else [], args.overrides,
                        source=Path(args.continue_from).resolve() if args.continue_from else None)
            first = first or out / name
    rows = [row(n, json.loads((out / n / "report.json").read_text()), out) for n in VARIANTS
            if n in names and (out / n / "report.json").is_file()]
    print(table(rows))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
