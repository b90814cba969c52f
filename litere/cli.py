"""Command-line options shared by rollout.py and eval.py: the model and sampler, decoding and agent limits, the
judge; and what they build from them."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .agent.loop import Agent, AgentConfig
from .agent.processes import AgentProcesses
from .questions import Environments, world_env_settings
from .reward import ExactMatchJudge, LocalJudge, OpenAIJudge
from .sampler import Sampler, SamplingParams
from .tokenizer import Tokenizer
from .weights import load_model, resolve_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_arguments(parser):
    group = parser.add_argument_group("model and sampler")
    group.add_argument("--model", help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: the checkpoint's)")
    group.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 suits tiny models)")
    group.add_argument("--processes", type=int, default=1,
                       help="rollout worker processes, each with its own model and --threads threads (default 1); "
                            "on a CPU, one per core with --threads 1 is the fastest, with the same trajectories")
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
    group.add_argument("--seed", type=int, help="makes the run reproducible: each question's samples get seeds "
                                                "derived from it and the question id")
    group.add_argument("--max-turns", type=int, default=max_turns, help="assistant turns per trajectory")
    group.add_argument("--max-response-tokens", type=int, default=max_response_tokens,
                       help="sampled + tool tokens after the prompt")
    group.add_argument("--max-context", type=int, help="prompt + response tokens (default: the sampler's limit)")
    group.add_argument("--final-answer-tokens", type=int, default=2048,
                       help="eval: tokens kept for the answer after the context-limit reminder")
    group.add_argument("--system-prompt", metavar="FILE", help="system prompt text (default: the training one, "
                                                                "litere/system_prompt.txt)")
    group.add_argument("--concurrency", type=int, help="trajectories in flight at once (default: all)")
    group.add_argument("--tool-workers", type=int, default=16,
                       help="threads running tool calls (0: inline, one at a time, in a deterministic order)")
    group.add_argument("--env-timeout", type=float, default=30.0,
                       help="HTTP environments: seconds per try of a request; a tool call gets 3 tries (2 retries) "
                            "and a deadline of 3x this, then the model sees the tool error text")


def env_settings(args) -> dict:
    """Tool output sizes: the world manifest beside the question file, overridden by --env-setting."""
    settings = world_env_settings(args.questions)
    for pair in args.env_setting:
        key, sep, value = pair.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"--env-setting {pair!r}: expected KEY=INTEGER, e.g. results_per_query=3")
        settings[key.strip()] = int(value)
    return settings


def environments(args) -> Environments:
    """Each question's environment (its own `env`, else --env), with the tool output sizes and --env-timeout."""
    return Environments(args.env, timeout=args.env_timeout, **env_settings(args))


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
                      max_num_seqs=args.max_num_seqs, stop_token_ids=tokenizer.stop_token_ids, seed=args.seed,
                      compile=args.compile)
    return model, tokenizer, sampler


def policy_agent(args, params: SamplingParams, config: AgentConfig) -> Agent:
    """load_policy's sampler with the questions' environments (a module-level function, so that rollout worker
    processes can build it)."""
    _, tokenizer, sampler = load_policy(args)
    return Agent(sampler, tokenizer, environments(args), params, config)


def make_agent(args, params: SamplingParams, config: AgentConfig):
    """The agent of rollout.py and eval.py: one in this process, or --processes workers that each build their own."""
    if args.processes < 1:
        raise SystemExit(f"--processes {args.processes}: must be >= 1")
    if args.processes == 1:
        return policy_agent(args, params, config)
    if not args.model:
        raise SystemExit("--model DIR is required")
    resolve_checkpoint(args.model)  # a bad directory fails here, as with one process, not in every worker
    return AgentProcesses(functools.partial(policy_agent, args, params, config), args.processes,
                          threads=args.threads or 1)


def sampling_params(args, greedy: bool = False) -> SamplingParams:
    """The decoding options; --seed becomes the run's seed, from which the agent derives each question's."""
    if greedy:
        return SamplingParams(temperature=0.0)
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                          presence_penalty=args.presence_penalty, repetition_penalty=args.repetition_penalty,
                          seed=args.seed)


def agent_config(args) -> AgentConfig:
    system = {"system_prompt": Path(args.system_prompt).read_text()} if args.system_prompt else {}
    return AgentConfig(mode=args.mode, max_turns=args.max_turns, max_response_tokens=args.max_response_tokens,
                       max_context_tokens=args.max_context, final_answer_tokens=args.final_answer_tokens,
                       tool_workers=args.tool_workers, max_concurrent=args.concurrency, **system)


def add_judge_arguments(parser):
    group = parser.add_argument_group("judge")
    group.add_argument("--judge", choices=("exact_match", "llm", "local"), default="exact_match",
                       help="how answers are scored (llm: OpenAI-compatible endpoint; local: a litere model)")
    group.add_argument("--judge-url", help="base URL of the OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    group.add_argument("--judge-model", help="model name sent to the endpoint, or the checkpoint dir for --judge local")
    group.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the endpoint's API key (optional)")
    group.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
    group.add_argument("--judge-retries", type=int, default=2)
    group.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight at once")


def judge_from_args(args, *, device="cpu", dtype=None):
    if args.judge == "exact_match":
        return ExactMatchJudge()
    if args.judge == "llm":
        if not args.judge_url or not args.judge_model:
            raise SystemExit("--judge llm needs --judge-url and --judge-model")
        return OpenAIJudge(args.judge_url, args.judge_model, api_key=os.environ.get(args.judge_api_key_env),
                           timeout=args.judge_timeout, retries=args.judge_retries,
                           max_concurrency=args.judge_concurrency)
    if not args.judge_model:
        raise SystemExit("--judge local needs --judge-model DIR (a litere/HF checkpoint with tokenizer.json)")
    model = load_model(args.judge_model, device=device, dtype=dtype).eval()
    return LocalJudge(Sampler(model), Tokenizer.from_dir(args.judge_model))
