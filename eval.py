"""Score a model on a question set: avg@k, pass@k, accuracy per data_source, termination histogram, turns / tool
calls / tokens per trajectory and tool latency, written as report.json and report.md into the run directory.

    python eval.py --model DIR --questions FILE --k 4 [--env DB_OR_URLS] [--out RUN_DIR] [--greedy]
                   [--judge llm --judge-url http://host:8000/v1 --judge-model NAME]
    python eval.py --trajectories FILE [--questions FILE] [--judge ...] [--out RUN_DIR]   # re-score, no model

Decoding follows docs/protocol.md section 7 (temperature 0.6, top_p 0.95, top_k 20, presence penalty 1.1, up to 100
model calls, the context-limit reminder); every option can be overridden. With --trajectories, saved
trajectories (rollout.py or an earlier eval) are judged again; --questions then replaces their labelled answers.

Trajectories are appended to OUT/trajectories.jsonl as they finish. Rerunning the same command with the same --out
after a crash or a kill resumes the run: questions whose k samples are all written are not run again, a question
cut in the middle is run again from its start, and with --seed the result equals an uninterrupted run's. The
report files are written at the end, each atomically. --overwrite starts over.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from litere.agent.loop import print_progress
from litere.agent.trajectory import read_trajectories
from litere.cli import (add_agent_arguments, add_judge_arguments, add_model_arguments, agent_config, judge_from_args,
                        make_agent, sampling_params)
from litere.evaluation import ResumeError, evaluate, report_markdown, summarize, write_run
from litere.questions import load_questions
from litere.reward import score_trajectories


def rescore(args, judge) -> tuple[list, dict]:
    trajectories = read_trajectories(args.trajectories)
    if args.questions:
        by_id = {q.id: q for q in load_questions(args.questions)}
        unknown = sorted({t.question_id for t in trajectories} - by_id.keys())
        if unknown:
            raise SystemExit(f"{args.trajectories}: question ids {unknown[:5]} are not in {args.questions}")
        for t in trajectories:
            q = by_id[t.question_id]
            t.question, t.answers, t.data_source = q.question, list(q.answers), q.data_source
    score_trajectories(trajectories, judge)
    return trajectories, summarize(trajectories, args.k)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_agent_arguments(parser, mode="eval", temperature=0.6, top_p=0.95, top_k=20, presence_penalty=1.1,
                        max_turns=100, max_response_tokens=None)
    parser.add_argument("--k", type=int, help="samples per question (default 4; with --trajectories: as saved)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of the sampling defaults")
    parser.add_argument("--trajectories", help="re-score these saved trajectories instead of running a model")
    parser.add_argument("--out", help="run directory (default runs/eval-TIMESTAMP)")
    parser.add_argument("--title", default="Evaluation")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in --out instead of resuming the run found there")
    add_judge_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    judge = judge_from_args(args, device=args.device)
    start = time.perf_counter()
    if args.trajectories:
        trajectories, report = rescore(args, judge)
        report["run"] = {"trajectories": args.trajectories, "questions": args.questions, "judge": args.judge}
        write_run(out, trajectories, report, args.title)
    else:
        if not args.questions:
            parser.error("--questions FILE is required (or --trajectories FILE to re-score)")
        questions = load_questions(args.questions, args.limit)
        params = sampling_params(args, greedy=args.greedy)
        config = agent_config(args)
        limits = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("system_prompt", "reminder")}
        info = {"model": args.model, "questions": args.questions, "k": args.k or 4, "judge": args.judge,
                "sampling": dataclasses.asdict(params), "agent": limits}
        try:
            report = evaluate(None, None, questions, None, args.k or 4, params=params, judge=judge, out_dir=out,
                              resume=not args.overwrite, on_progress=print_progress, title=args.title,
                              run_info=info, agent=make_agent(args, params, config))
        except ResumeError as e:
            raise SystemExit(f"{e} (--overwrite starts over)") from None
        sys.stderr.write("\n")
    print(report_markdown(report, args.title))
    print(f"{time.perf_counter() - start:.1f}s; report.json, report.md and trajectories.jsonl in {out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
