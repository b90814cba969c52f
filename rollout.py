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

import torch

from litere.agent import Agent, AgentConfig, print_progress
from litere.questions import Environments, load_questions, world_env_settings
from litere.reward import ExactMatchJudge, score_trajectories
from litere.sampler import Sampler, SamplingParams
from litere.tokenizer import Tokenizer
from litere.weights import load_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_arguments(parser):
    group = parser.add_argument_group("model and sampler")
    group.add_argument("--model", help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: the checkpoint's)")
    group.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 suits tiny models)")
    group.add_argument("--cache-tokens", type=int, help="KV cache size in tokens (default: the sampler's)")
    group.add_argument("--max-batch-tokens", type=int, default=2048, help="tokens per sampler forward pass")
    group.add_argument("--max-num-seqs", type=int, default=256, help="sequences decoding at once in the sampler")
    group.add_argument("--compile", choices=("default", "reduce-overhead"),
                       help="compile the sampler's decode step (reduce-overhead: CUDA graphs); the first steps wait "
                            "for the compiler")


def add_agent_arguments(parser, *, mode: str, temperature: float, top_p: float, top_k: int, presence_penalty: float,
                        max_turns: int, max_response_tokens: int | None):
    group = parser.add_argument_group("decoding and limits")
    group.add_argument("--questions", help="question file: JSON lines or LiteResearcher-Data parquet")
    group.add_argument("--limit", type=int, help="only the first N questions")
    group.add_argument("--env", help="default environment: a page-store database or service URL(s)")
    group.add_argument("--env-setting", action="append", default=[], metavar="KEY=VALUE",
                       help="tool output size override, e.g. results_per_query=3 (repeatable; default: what the "
                            "world database records)")
    group.add_argument("--mode", choices=("train", "eval"), default=mode,
                       help="eval: malformed calls get the error text, and the context limit asks for an answer")
    group.add_argument("--temperature", type=float, default=temperature)
    group.add_argument("--top-p", type=float, default=top_p)
    group.add_argument("--top-k", type=int, default=top_k)
    group.add_argument("--min-p", type=float, default=0.0)
    group.add_argument("--presence-penalty", type=float, default=presence_penalty)
    group.add_argument("--repetition-penalty", type=float, default=1.0)
    group.add_argument("--seed", type=int, help="makes the run reproducible (seeds the per-request seeds)")
    group.add_argument("--max-turns", type=int, default=max_turns, help="assistant turns per trajectory")
    group.add_argument("--max-response-tokens", type=int, default=max_response_tokens,
                       help="sampled + tool tokens after the prompt")
    group.add_argument("--max-context", type=int, help="prompt + response tokens (default: the sampler's limit)")
    group.add_argument("--final-answer-tokens", type=int, default=2048,
                       help="eval: tokens kept for the answer after the context-limit reminder")
    group.add_argument("--system-prompt", metavar="FILE", help="system prompt text (default: the training one, "
                                                                "litere/system_prompt.txt)")
    group.add_argument("--concurrency", type=int, help="trajectories in flight at once (default: all)")
    group.add_argument("--tool-workers", type=int, default=16, help="threads running tool calls")


def env_settings(args) -> dict:
    """Tool output sizes: the world manifest beside the question file, overridden by --env-setting."""
    settings = world_env_settings(args.questions)
    for pair in args.env_setting:
        key, sep, value = pair.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"--env-setting {pair!r}: expected KEY=INTEGER, e.g. results_per_query=3")
        settings[key.strip()] = int(value)
    return settings


def load_policy(args):
    """(model, tokenizer, sampler) from --model and the sampler options."""
    if not args.model:
        raise SystemExit("--model DIR is required")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=DTYPES[args.dtype] if args.dtype else None).eval()
    tokenizer = Tokenizer.from_dir(args.model)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(f"{args.model}: tokenizer has {tokenizer.vocab_size} tokens, the model only "
                         f"{model.config.vocab_size}")
    sampler = Sampler(model, max_cache_tokens=args.cache_tokens, max_batch_tokens=args.max_batch_tokens,
                      max_num_seqs=args.max_num_seqs, stop_token_ids=(tokenizer.im_end_id,), seed=args.seed,
                      compile=args.compile)
    return model, tokenizer, sampler


def sampling_params(args, greedy: bool = False) -> SamplingParams:
    if greedy:
        return SamplingParams(temperature=0.0)
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                          presence_penalty=args.presence_penalty, repetition_penalty=args.repetition_penalty)


def agent_config(args) -> AgentConfig:
    system = {"system_prompt": Path(args.system_prompt).read_text()} if args.system_prompt else {}
    return AgentConfig(mode=args.mode, max_turns=args.max_turns, max_response_tokens=args.max_response_tokens,
                       max_context_tokens=args.max_context, final_answer_tokens=args.final_answer_tokens,
                       tool_workers=args.tool_workers, max_concurrent=args.concurrency, **system)


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
