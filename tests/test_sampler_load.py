"""The sampler under load: 150 requests of mixed lengths (shared prompts, resumable multi-turn requests extended with
forced tokens, greedy and seeded sampling, stop tokens and budgets) under a cache that holds a tenth of them finish
exactly as under a cache that holds them all. benchmarks/bench_sampler_load.py runs the same with 1,000 requests."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_sampler_load import VOCAB, measure  # noqa: E402
from litere.sampler import Sampler, SamplingParams  # noqa: E402
from model_utils import drain, random_model, random_prompts, small_config  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return random_model(small_config(vocab_size=VOCAB), seed=3)


def test_a_tenth_size_cache_preempts_and_recomputes_invisibly(model):
    r = measure(150, seed=0, fraction=0.1, model=model)
    assert r["requests"] == 150 and r["shared_prompt_requests"] > 30 and r["extends"] > 20
    assert 0.09 < r["cache_fraction"] < 0.11
    # the constraint bites: running sequences are preempted, paused/queued caches dropped, tokens recomputed;
    # the unconstrained run never waits for blocks
    assert r["preemptions"] > 50 and r["idle_cache_drops"] > 0 and r["recomputed_tokens"] > 5000
    assert r["unconstrained_preemptions"] == 0
    assert r["max_running"]["constrained"] < r["max_running"]["unconstrained"]
    # and nothing else changes: every turn completes with the same tokens, logprobs (fp32 rounding: a recomputed
    # prefix is prefilled in chunks, not decoded token by token) and finish reason
    assert r["completed"] == r["requests"]
    assert r["identical"], r["differences"]
    assert r["max_logprob_diff"] <= 1e-5
    # no turn ends early: each stops on its own stop token, at exactly its max_new_tokens or at exactly its budget
    assert r["truncations"] == 0 and r["unconstrained_truncations"] == 0, r["truncation_examples"]
    assert set(r["finish_reasons"]) == {"stop", "length", "budget"}
    assert r["blocks_leaked"] == {"unconstrained": 0, "constrained": 0}


def test_a_seeded_request_without_filters_ignores_its_batch_mates_filters(model):
    a, b = random_prompts(VOCAB, 11, 7, seed=5)
    plain = SamplingParams(temperature=1.0, max_new_tokens=16, seed=1234, stop_token_ids=())
    results = []
    for mate in (None, SamplingParams(temperature=1.0, top_k=20, max_new_tokens=16, seed=1, stop_token_ids=())):
        sampler = Sampler(model, max_cache_tokens=1024)
        [rid] = sampler.add(a, plain)
        if mate is not None:
            sampler.add(b, mate)
        results.append(drain(sampler)[rid].token_ids)
    assert results[0] == results[1]
