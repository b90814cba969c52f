"""Run the agent over a question set and write one trajectory per line (JSON), scored by exact match.

    python rollout.py --model DIR --questions FILE --env DB_OR_URLS --n 8 --out OUT.jsonl \
        [--temperature 0.7 --top-p 0.95 --top-k 0 --max-turns 40 --max-response-tokens 32768 --max-context N ...]

The tokenizer is read from the model directory (tokenizer.json beside the weights). Questions may name their own
environment (`env`, relative to the question file); --env is the default for the others. Records are appended
as trajectories finish; a progress line on stderr shows trajectories done, tool calls/s and sampled tokens/s.
Re-score with another judge and get the full report with `python eval.py --trajectories OUT.jsonl`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from litere.agent.loop import Agent, print_progress
from litere.cli import (add_agent_arguments, add_model_arguments, agent_config, env_settings, load_policy,
                        sampling_params)
from litere.questions import Environments, load_questions
from litere.reward import ExactMatchJudge, score_trajectories


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_agent_arguments(parser, mode="train", temperature=0.7, top_p=0.95, top_k=0, presence_penalty=0.0,
                        max_turns=40, max_response_tokens=32768)
    parser.add_argument("--n", type=int, default=8, help="samples per question")
    parser.add_argument("--out", required=True, help="output JSON lines file")
    args = parser.parse_args(argv)
    if not args.questions:
        parser.error("--questions FILE is required")

    questions = load_questions(args.questions, args.limit)
    _, tokenizer, sampler = load_policy(args)
    envs = Environments(args.env, **env_settings(args))
    agent = Agent(sampler, tokenizer, envs, sampling_params(args), agent_config(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    judge = ExactMatchJudge()
    start = time.perf_counter()
    with out.open("w", encoding="utf-8") as f:
        def write(traj):
            score_trajectories([traj], judge)
            f.write(json.dumps(traj.to_dict(), ensure_ascii=False) + "\n")
            f.flush()

        trajectories = agent.run(questions, n=args.n, on_trajectory=write, on_progress=print_progress)
    sys.stderr.write("\n")
    elapsed = time.perf_counter() - start
    reasons = Counter(t.termination for t in trajectories)
    reward = sum(t.reward for t in trajectories) / max(1, len(trajectories))
    print(f"{len(trajectories)} trajectories ({len(questions)} questions x {args.n}) in {elapsed:.1f}s -> {out}; "
          f"exact-match reward {reward:.3f}; termination {dict(reasons)}", file=sys.stderr)


if __name__ == "__main__":
    main()
