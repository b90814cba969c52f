"""What the RL stages and the curriculum filter build from their rollout settings: the sampler, the sampling
parameters, the agent's limits, the judge."""
from __future__ import annotations

import os
from pathlib import Path

from ..agent import AgentConfig
from ..reward import ExactMatchJudge, OpenAIJudge
from ..sampler import Sampler, SamplingParams
from ..tokenizer import SYSTEM_PROMPT, Tokenizer
from .config import RolloutSettings


def make_sampler(model, settings: RolloutSettings, tokenizer: Tokenizer) -> Sampler:
    return Sampler(model, max_cache_tokens=settings.cache_tokens or None, max_batch_tokens=settings.max_batch_tokens,
                   max_num_seqs=settings.max_num_seqs, stop_token_ids=tokenizer.stop_token_ids,
                   compile=settings.compile or None)


def sampling_params(settings: RolloutSettings, tokenizer: Tokenizer, seed: int | None) -> SamplingParams:
    stop = () if settings.ignore_eos else tokenizer.stop_token_ids
    return SamplingParams(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                          min_p=settings.min_p, stop_token_ids=stop, seed=seed)


def system_prompt(settings: RolloutSettings) -> str:
    return Path(settings.system_prompt).read_text() if settings.system_prompt else SYSTEM_PROMPT


def agent_config(settings: RolloutSettings, mode: str = "train", max_response_tokens: int = 0) -> AgentConfig:
    """The response budget bounds a trajectory (prompts are checked against max_prompt_tokens), so a greedy probe
    in eval mode gets the same room per turn as training. `max_response_tokens` (0: the settings') replaces the
    budget."""
    budget = max_response_tokens or settings.max_response_tokens
    return AgentConfig(mode=mode, max_turns=settings.max_turns, max_response_tokens=budget,
                       final_answer_tokens=min(2048, max(1, budget // 8)),
                       tool_workers=settings.tool_workers, system_prompt=system_prompt(settings),
                       max_concurrent=settings.max_in_flight or settings.max_num_seqs)


def make_judge(settings: RolloutSettings):
    if settings.judge == "exact_match":
        return ExactMatchJudge()
    return OpenAIJudge(settings.judge_url, settings.judge_model, api_key=os.environ.get(settings.judge_api_key_env),
                       timeout=settings.judge_timeout, retries=settings.judge_retries,
                       max_concurrency=settings.judge_concurrency)


def check_prompts(questions, tokenizer: Tokenizer, settings: RolloutSettings, system: str):
    """A clear error for a question whose prompt is longer than max_prompt_tokens."""
    for q in questions:
        length = len(tokenizer.prompt_ids(q.question, system))
        if length > settings.max_prompt_tokens:
            raise ValueError(f"question {q.id!r}: its prompt has {length} tokens, more than max_prompt_tokens="
                             f"{settings.max_prompt_tokens}")
