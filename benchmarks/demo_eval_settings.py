"""The demo's evaluation, timed under three settings on the same model and questions, in one run:
eager with the 3,072-token context (the baseline), eager with 2,048 tokens, and the compiled decode step with 2,048
tokens (what `python -m litere.demo` uses). Prints each one's seconds, accuracy by type and how its trajectories
ended, and counts the questions whose answer or reward differs from the baseline's.

    python benchmarks/demo_eval_settings.py runs/demo/rl/final --world runs/demo/world --questions 120

The model directory must sit in a directory of the demo (its parent holds the demo's `.stamp`). The evaluations
are written under `--out` (default: a temporary directory); the last line printed is JSON.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litere import demo  # noqa: E402
from litere.agent.trajectory import read_trajectories  # noqa: E402

SETTINGS = (("eager, 3,072 tokens", 3072, ""), ("eager, 2,048 tokens", 2048, ""),
            ("compiled, 2,048 tokens", 2048, "default"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a demo model directory (Hugging Face layout)")
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "demo" / "world")
    parser.add_argument("--questions", type=int, default=120, help="held-out questions, an equal number per type")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="where the evaluations go (default: a temporary directory)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    held_file = args.world / "eval_questions.jsonl"
    questions = demo.sample_questions(held_file, args.questions)
    out = args.out or Path(tempfile.mkdtemp(prefix="demo_eval_settings-"))
    rows, outcomes = [], {}
    for i, (label, context, compile_mode) in enumerate(SETTINGS):
        start = time.perf_counter()
        report = demo.run_eval(f"setting{i}", out, args.model, held_file, questions, greedy=True,
                               context_tokens=context, compile=compile_mode)
        seconds = time.perf_counter() - start
        trajectories = read_trajectories(out / f"setting{i}" / "trajectories.jsonl")
        outcomes[label] = {t.question_id: (t.answer, t.reward) for t in trajectories}
        baseline = outcomes[SETTINGS[0][0]]
        row = {"setting": label, "seconds": round(seconds, 1), "accuracy": demo.accuracy_by_type(report),
               "termination": dict(collections.Counter(t.termination for t in trajectories)),
               "response_tokens": sum(len(t.response_ids) for t in trajectories),
               "differ_from_baseline": sum(outcomes[label][q] != baseline[q] for q in baseline)}
        rows.append(row)
        print(f"{label}: {seconds:.1f} s ({rows[0]['seconds'] / seconds:.2f}x), all {row['accuracy']['all']}, "
              f"{row['termination']}, {row['differ_from_baseline']} answers differ", flush=True)
    print(json.dumps({"model": str(args.model), "questions": len(questions), "threads": args.threads,
                      "rows": rows}))


if __name__ == "__main__":
    main()
