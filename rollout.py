"""Run the agent over a question set and write one trajectory per line (JSON), scored by exact match.

    python rollout.py --model DIR --questions FILE --env DB_OR_URLS --n 8 --out OUT.jsonl \
        [--temperature 0.7 --top-p 0.95 --top-k 0 --max-turns 40 --max-response-tokens 32768 --max-context N ...]

The tokenizer is read from the model directory (tokenizer.json beside the weights). Questions may name their own
environment (`env`, relative to the question file); --env is the default for the others. Records are appended
and flushed as trajectories finish; a progress line on stderr shows trajectories done, tool calls/s and sampled
tokens/s. Re-score with another judge and get the full report with `python eval.py --trajectories OUT.jsonl`.

An existing OUT is resumed: rerunning the same command after a crash or a kill skips the questions whose n samples
are all written and runs again, from their start, those cut in the middle (their lines and a torn last line are
removed first); with --seed the file then holds what an uninterrupted run writes (in another order). Records
sampled with other settings make it stop; --overwrite starts over.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from litere.agent.loop import print_progress
from litere.cli import add_agent_arguments, add_model_arguments, agent_config, make_agent, sampling_params
from litere.evaluation import ResumeError, TrajectoryLog, resume_trajectories
from litere.questions import load_questions
from litere.reward import ExactMatchJudge, score_trajectories


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_agent_arguments(parser, mode="train", temperature=0.7, top_p=0.95, top_k=0, presence_penalty=0.0,
                        max_turns=40, max_response_tokens=32768)
    parser.add_argument("--n", type=int, default=8, help="samples per question")
    parser.add_argument("--out", required=True, help="output JSON lines file (resumed if it exists)")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming an existing --out")
    args = parser.parse_args(argv)
    if not args.questions:
        parser.error("--questions FILE is required")

    questions = load_questions(args.questions, args.limit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = sampling_params(args)
    if args.overwrite:
        out.write_bytes(b"")
    try:
        done, todo, foreign = resume_trajectories(out, questions, args.n, params)
    except ResumeError as e:
        raise SystemExit(f"{e} (--overwrite starts over)") from None
    if done or foreign:
        print(f"resuming {out}: {len(done)} trajectories of {len(questions) - len(todo)} questions already written"
              + (f", {foreign} of questions outside this run kept" if foreign else "")
              + f"; {len(todo)} questions to run", file=sys.stderr)
    start = time.perf_counter()
    trajectories = []
    if todo:
        agent = make_agent(args, params, agent_config(args))
        judge = ExactMatchJudge()
        log = TrajectoryLog(out)
        try:
            trajectories = agent.run(todo, n=args.n, on_progress=print_progress,
                                     on_trajectory=lambda t: log.write(score_trajectories([t], judge)[0]))
        finally:
            log.close()
        sys.stderr.write("\n")
    elapsed = time.perf_counter() - start
    every = done + trajectories
    reasons = Counter(t.termination for t in every)
    reward = sum(t.reward or 0.0 for t in every) / max(1, len(every))
    print(f"{len(trajectories)} trajectories ({len(todo)} questions x {args.n}) in {elapsed:.1f}s -> {out}"
          + (f" (+{len(done)} written before)" if done else "")
          + f"; exact-match reward {reward:.3f}; termination {dict(reasons)}", file=sys.stderr)


if __name__ == "__main__":
    main()
