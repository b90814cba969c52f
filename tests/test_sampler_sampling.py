"""Logits processing and token choice on fixed logits, checked against hand-computed distributions."""
import math

import pytest
import torch

from litere.sampler.sampling import Rows, SamplingParams, apply_penalties, sample, uniform

# probabilities 0.5, 0.2, 0.15, 0.1, 0.05 on tokens 3, 0, 4, 1, 2 (not in vocabulary order)
PROBS = torch.tensor([0.2, 0.1, 0.05, 0.5, 0.15])
LOGITS = PROBS.log() + 1.7  # an offset must not matter


def empirical(logits: torch.Tensor, params: SamplingParams, draws: int = 4000) -> torch.Tensor:
    """The distribution `sample` draws from: feed it an evenly spaced grid of uniforms (inverse-CDF sampling)."""
    rows = Rows.build([params] * draws, [0] * draws, [0] * draws, logits.shape[-1], "cpu")
    rows.uniforms = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
    tokens, _ = sample(logits.expand(draws, -1), rows)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / draws


def normalised(weights: dict[int, float]) -> torch.Tensor:
    out = torch.zeros(len(PROBS))
    for token, w in weights.items():
        out[token] = w
    return out / out.sum()


CASES = {
    "plain": (SamplingParams(), PROBS),
    "temperature-2": (SamplingParams(temperature=2.0), PROBS.sqrt() / PROBS.sqrt().sum()),
    "top-k-2": (SamplingParams(top_k=2), normalised({3: 0.5, 0: 0.2})),
    "top-p-0.65": (SamplingParams(top_p=0.65), normalised({3: 0.5, 0: 0.2})),
    "top-p-0.75": (SamplingParams(top_p=0.75), normalised({3: 0.5, 0: 0.2, 4: 0.15})),
    "min-p-0.25": (SamplingParams(min_p=0.25), normalised({3: 0.5, 0: 0.2, 4: 0.15})),
    # top-p acts on the top-k distribution renormalised: 0.5/0.85 + 0.2/0.85 = 0.82 reaches 0.8 without token 4
    "top-k-3-then-top-p-0.8": (SamplingParams(top_k=3, top_p=0.8), normalised({3: 0.5, 0: 0.2})),
    "min-p-0.35-and-top-k-4": (SamplingParams(min_p=0.35, top_k=4), normalised({3: 0.5, 0: 0.2})),
}


@pytest.mark.parametrize("case", CASES)
def test_filtered_distribution_matches_hand_computed(case):
    params, expected = CASES[case]
    torch.testing.assert_close(empirical(LOGITS, params), expected, atol=1e-3, rtol=0)


def test_rows_with_different_filters_in_one_batch():
    params = [SamplingParams(top_k=2), SamplingParams(), SamplingParams(temperature=0), SamplingParams(min_p=0.25)]
    draws = 2000
    grid = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
    rows = Rows.build([p for p in params for _ in range(draws)], [0] * 4 * draws, [0] * 4 * draws, 5, "cpu")
    rows.uniforms = grid.repeat(4)
    tokens, _ = sample(LOGITS.expand(4 * draws, -1), rows)
    freq = [torch.bincount(t, minlength=5).float() / draws for t in tokens.view(4, draws)]
    torch.testing.assert_close(freq[0], normalised({3: 0.5, 0: 0.2}), atol=1e-3, rtol=0)
    torch.testing.assert_close(freq[1], PROBS, atol=1e-3, rtol=0)
    torch.testing.assert_close(freq[2], normalised({3: 1.0}), atol=0, rtol=0)
    torch.testing.assert_close(freq[3], normalised({3: 0.5, 0: 0.2, 4: 0.15}), atol=1e-3, rtol=0)


def test_penalties_follow_hf_semantics():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -0.5]])
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5)
    prompt = torch.tensor([[True, True, False, False, False]])
    output = torch.tensor([[False, False, False, True, True]])
    rows = Rows.build([params], [0], [0], 5, "cpu", prompt, output)
    # seen anywhere: positive / 2, negative * 2; seen in the output: then - 0.5
    expected = torch.tensor([[1.0, -2.0, 0.5, 1.5 - 0.5, -1.0 - 0.5]])
    torch.testing.assert_close(apply_penalties(logits, rows), expected)
    greedy = Rows.build([SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=0.5)], [0], [0], 5,
                        "cpu", prompt, output)
    tokens, logprobs = sample(logits, greedy)
    assert tokens.tolist() == [0]  # 3 would win without penalties
    # the logprob is the unpenalised one at temperature 1
    torch.testing.assert_close(logprobs, logits.log_softmax(-1)[:, 0])


def test_logprob_is_of_logits_over_temperature_before_filtering():
    params = SamplingParams(temperature=0.5, top_k=2, seed=3)
    rows = Rows.build([params], [3], [10], 5, "cpu")
    tokens, logprobs = sample(LOGITS[None], rows)
    torch.testing.assert_close(logprobs, (LOGITS[None] / 0.5).log_softmax(-1).gather(-1, tokens[:, None])[:, 0])


def test_uniform_is_a_fixed_function_of_seed_and_position():
    values = [uniform(seed, pos) for seed in (0, 1, 2**62) for pos in range(50)]
    assert all(0 < u < 1 for u in values)
    assert len(set(values)) == len(values)
    assert uniform(7, 11) == uniform(7, 11)
    assert abs(sum(uniform(5, p) for p in range(20000)) / 20000 - 0.5) < 0.01


@pytest.mark.parametrize("field,value,message", [
    ("temperature", -0.1, "temperature"), ("temperature", math.inf, "temperature"), ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"), ("top_k", -1, "top_k"), ("top_k", 2.5, "top_k"), ("min_p", 1.5, "min_p"),
    ("repetition_penalty", 0.0, "repetition_penalty"), ("presence_penalty", math.nan, "presence_penalty"),
    ("max_new_tokens", 0, "max_new_tokens"), ("max_new_tokens", -3, "max_new_tokens"),
    ("stop_token_ids", (1, -2), "stop_token_ids"), ("stop_strings", ("",), "stop_strings"),
    ("seed", 1.5, "seed"), ("max_total_tokens", 1, "max_total_tokens"),
])
def test_invalid_params_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})
