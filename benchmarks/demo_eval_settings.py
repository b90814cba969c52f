"""The demo's evaluation, timed under several settings on the same model and questions, in one run:
eager with the 3,072-token context (the baseline), eager with 2,048 tokens, the compiled decode step with 2,048
tokens in one process of --threads threads, and the same in --threads processes of one thread each (what
`python -m litere.demo` uses). Prints each one's seconds, accuracy by type and how its trajectories ended, and
counts the questions whose answer or reward, and those whose token ids, differ from the first setting's (with
another context length, long trajectories are cut elsewhere: their token ids differ by design).

    python benchmarks/demo_eval_settings.py runs/demo/rl/final --world runs/demo/world --questions 120
    python benchmarks/demo_eval_settings.py runs/demo/sft/final --questions 360 --settings 2,3 --repeats 3

The model directory must sit in a directory of the demo (its parent holds the demo's `.stamp`). The evaluations
are written under `--out` (default: a temporary directory); the last line printed is JSON.
"""
from __future__ import annotations

import argparse
import collections
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
from litere.agent.trajectory import read_trajectories  # noqa: E402

SETTINGS = (("eager, 3,072 tokens", 3072, "", False), ("eager, 2,048 tokens", 2048, "", False),
            ("compiled, 2,048 tokens", 2048, "default", False),
            ("compiled, 2,048 tokens, a process per thread", 2048, "default", True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a demo model directory (Hugging Face layout)")
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "demo" / "world")
    parser.add_argument("--questions", type=int, default=120, help="held-out questions, an equal number per type")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="where the evaluations go (default: a temporary directory)")
    parser.add_argument("--settings", default="0,1,2,3", help="which settings, by index (the first is the baseline)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting, interleaved; medians")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    held_file = args.world / "eval_questions.jsonl"
    questions = demo.sample_questions(held_file, args.questions)
    out = args.out or Path(tempfile.mkdtemp(prefix="demo_eval_settings-"))
    chosen = [int(i) for i in args.settings.split(",")]
    seconds = {i: [] for i in chosen}
    rows, outcomes = [], {}
    for repeat in range(args.repeats):
        for i in chosen:
            label, context, compile_mode, per_thread = SETTINGS[i]
            name = f"setting{i}-{repeat}"
            start = time.perf_counter()
            report = demo.run_eval(name, out, args.model, held_file, questions, greedy=True, context_tokens=context,
                                   compile=compile_mode, processes=args.threads if per_thread else 1)
            seconds[i].append(time.perf_counter() - start)
            if repeat:
                continue
            trajectories = read_trajectories(out / name / "trajectories.jsonl")
            outcomes[label] = {t.question_id: (t.answer, t.reward, t.response_ids) for t in trajectories}
            baseline = outcomes[SETTINGS[chosen[0]][0]]
            rows.append({"setting": label, "accuracy": demo.accuracy_by_type(report),
                         "termination": dict(collections.Counter(t.termination for t in trajectories)),
                         "response_tokens": sum(len(t.response_ids) for t in trajectories),
                         "differ_from_first": sum(outcomes[label][q][:2] != baseline[q][:2] for q in baseline),
                         "token_ids_differ": sum(outcomes[label][q][2] != baseline[q][2] for q in baseline)})
    first = statistics.median(seconds[chosen[0]])
    for i, row in zip(chosen, rows):
        row["seconds"] = [round(x, 1) for x in seconds[i]]
        median = statistics.median(seconds[i])
        print(f"{row['setting']}: {median:.1f} s median of {len(seconds[i])} ({first / median:.2f}x), all "
              f"{row['accuracy']['all']}, {row['termination']}, {row['differ_from_first']} answers and "
              f"{row['token_ids_differ']} trajectories' token ids differ",
              flush=True)
    print(json.dumps({"model": str(args.model), "questions": len(questions), "threads": args.threads,
                      "rows": rows}))


if __name__ == "__main__":
    main()
