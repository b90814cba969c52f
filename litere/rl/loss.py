"""RL losses on packed micro-batches: the clipped policy surrogate, truncated importance sampling, KL, value loss.

Every function takes flat per-token tensors of shape (N,): the loss tokens (tokens the policy sampled) of the
responses in one packed micro-batch, with `seq_index` (N,) naming the local sequence 0..S−1 of each token. A
sequence lies in one micro-batch. Normalisation uses counts over the global mini-batch (all micro-batches, all
ranks) passed in as a `Normalizer`, so the returned losses sum over micro-batches and ranks to the global loss and
neither the micro-batch size nor the number of ranks changes a step.

Metrics are dicts of detached 0-dim float64 tensors holding sums (or, for keys ending in `_max`, maxima) over the
micro-batch, ready to be all-reduced. The recipe is docs/protocol.md section 5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k3")
Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Normalizer:
    """Global counts of one mini-batch: loss tokens, sequences, and the response budget L for
    "seq-mean-token-sum-norm" (each sequence's sum is divided by this constant instead of its own length)."""
    tokens: float
    sequences: float
    max_tokens: int = 0


def _check_tokens(seq_index: torch.Tensor | None = None, **tensors: torch.Tensor | None) -> None:
    """Every given tensor is 1-D and of one shape (N,); seq_index, when given, is an integer tensor."""
    shape = None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.ndim != 1:
            raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(tensor.shape)}")
        if shape is None:
            shape = tensor.shape
        elif tensor.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)} like the other per-token tensors, "
                             f"got {tuple(tensor.shape)}")
    if seq_index is not None:
        if seq_index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"seq_index must be an int32/int64 tensor, got {seq_index.dtype}")
        if shape is not None and seq_index.shape != shape:
            raise ValueError(f"seq_index must have shape {tuple(shape)}, got {tuple(seq_index.shape)}")


def _num_sequences(seq_index: torch.Tensor) -> int:
    return int(seq_index.max()) + 1 if seq_index.numel() else 0


def _metric(x: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def _token_weights(seq_index: torch.Tensor, mode: str, norm: Normalizer, dtype: torch.dtype) -> torch.Tensor:
    """(N,) constant w such that the aggregated loss is Σ_i w_i · value_i."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"mode must be one of {AGGREGATIONS}, got {mode!r}")
    if mode == "token-mean":
        if norm.tokens <= 0:
            raise ValueError(f"norm.tokens must be > 0, got {norm.tokens}")
        return torch.full(seq_index.shape, 1.0 / norm.tokens, dtype=dtype, device=seq_index.device)
    if norm.sequences <= 0:
        raise ValueError(f"norm.sequences must be > 0 for mode {mode!r}, got {norm.sequences}")
    if mode == "seq-mean-token-mean":
        lengths = torch.bincount(seq_index, minlength=_num_sequences(seq_index)).to(dtype)
        return 1.0 / (lengths[seq_index] * norm.sequences)
    if mode == "seq-mean-token-sum":
        length = 1.0
    else:
        if norm.max_tokens <= 0:
            raise ValueError(f"norm.max_tokens must be > 0 for mode {mode!r}, got {norm.max_tokens}")
        length = float(norm.max_tokens)
    return torch.full(seq_index.shape, 1.0 / (length * norm.sequences), dtype=dtype, device=seq_index.device)


def aggregate(values: torch.Tensor, seq_index: torch.Tensor, mode: str, norm: Normalizer) -> torch.Tensor:
    """Scalar: this micro-batch's share of the global aggregate of per-token values (N,).

    token-mean: Σ values / norm.tokens. seq-mean-token-mean: Σ_seq mean(values of seq) / norm.sequences.
    seq-mean-token-sum: Σ_seq sum(values of seq) / norm.sequences. seq-mean-token-sum-norm:
    Σ_seq sum(values of seq) / norm.max_tokens / norm.sequences. Every token passed in counts.
    """
    _check_tokens(seq_index, values=values)
    return (values * _token_weights(seq_index, mode, norm, values.dtype)).sum()


def tis_weights(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, seq_index: torch.Tensor, *,
                cap: float | None = 2.0, veto: float | None = 1e-4) -> tuple[torch.Tensor, Metrics]:
    """Truncated importance-sampling weights (N,), without gradient, correcting trainer-vs-sampler mismatch.

    trainer_logprobs: (N,) log π_old as the trainer computes it; rollout_logprobs: (N,) as the sampler reported it.
    w = min(exp(trainer − rollout), cap). cap None or <= 0 turns the correction off (w = 1). Every token of a
    sequence holding any token with trainer − rollout < log(veto) gets w = 0; veto None or 0 turns that off.
    Metrics: tis_weight_sum, tis_weight_sq_sum, tis_tokens (so ESS = (Σw)² / (N Σw²), see
    `effective_sample_size`), veto_sequences, sequences, abs_logprob_diff_sum, abs_logprob_diff_max.
    """
    _check_tokens(seq_index, trainer_logprobs=trainer_logprobs, rollout_logprobs=rollout_logprobs)
    if veto is not None and veto < 0:
        raise ValueError(f"veto must be >= 0 (0 or None disables it), got {veto}")
    with torch.no_grad():
        log_ratio = trainer_logprobs.detach() - rollout_logprobs.detach()
        if cap is not None and cap > 0:
            weights = log_ratio.exp().clamp(max=cap)
        else:
            weights = torch.ones_like(log_ratio)
        sequences = _num_sequences(seq_index)
        vetoed = torch.zeros(sequences, dtype=torch.bool, device=seq_index.device)
        if veto:
            below = (log_ratio < math.log(veto)).to(log_ratio.dtype)
            vetoed = log_ratio.new_zeros(sequences).index_add(0, seq_index, below) > 0
            weights = weights.masked_fill(vetoed[seq_index], 0.0)
        diff = log_ratio.abs()
        metrics = {
            "tis_weight_sum": _metric(weights.sum()),
            "tis_weight_sq_sum": _metric(weights.square().sum()),
            "tis_tokens": _metric(weights.numel()),
            "veto_sequences": _metric(vetoed.sum()),
            "sequences": _metric(sequences),
            "abs_logprob_diff_sum": _metric(diff.sum()),
            "abs_logprob_diff_max": _metric(diff.max() if diff.numel() else 0.0),
        }
    return weights, metrics


def effective_sample_size(weight_sum: float, weight_sq_sum: float, tokens: float) -> float:
    """ESS = (Σw)² / (N Σw²) in (0, 1] from globally reduced sums; 0 when every weight is 0."""
    return weight_sum ** 2 / (tokens * weight_sq_sum) if weight_sq_sum > 0 else 0.0


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                seq_index: torch.Tensor, *, mode: str, norm: Normalizer, clip_low: float = 0.2,
                clip_high: float = 0.4, dual_clip: float | None = 3.0,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """Clipped (and dual-clipped) policy-gradient surrogate, aggregated with `aggregate`.

    logprobs: (N,) log π_θ with gradient; old_logprobs: (N,) log π_old (detached here); advantages: (N,) the
    trajectory's advantage broadcast to its tokens; weights: optional (N,) TIS weights (detached here).
    Per token, with ratio = exp(logprobs − old_logprobs):
        pg = max(−A·ratio, −A·clip(ratio, 1 − clip_low, 1 + clip_high)); for A < 0, pg = min(pg, −A·dual_clip).
    dual_clip None or <= 1 disables the dual clip. The per-token pg is multiplied by weights, then aggregated.
    A token counts in clip_low_tokens / clip_high_tokens when max() picks the clipped term and it is strictly
    larger than the unclipped one, with ratio below / above the band (A < 0 with ratio < 1 − clip_low, or A > 0
    with ratio > 1 + clip_high); in dual_clip_tokens when A < 0 and −A·dual_clip is strictly below the clipped
    surrogate. Such tokens carry no gradient. Metrics: tokens, ratio_sum, clip_low_tokens, clip_high_tokens,
    dual_clip_tokens, pg_loss (the returned loss).
    """
    _check_tokens(seq_index, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, weights=weights)
    if not 0 <= clip_low < 1:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if clip_high < 0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    advantages = advantages.detach()
    ratio = (logprobs - old_logprobs.detach()).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        band_active = clipped > unclipped
        clip_low_tokens = (band_active & (ratio < 1.0)).sum()
        clip_high_tokens = (band_active & (ratio > 1.0)).sum()
    dual_clip_tokens = 0
    if dual_clip is not None and dual_clip > 1:
        bound = -advantages * dual_clip
        dual_active = (advantages < 0) & (bound < pg)
        pg = torch.where(dual_active, bound, pg)
        dual_clip_tokens = dual_active.sum()
    if weights is not None:
        pg = pg * weights.detach()
    loss = aggregate(pg, seq_index, mode, norm)
    metrics = {
        "tokens": _metric(logprobs.numel()),
        "ratio_sum": _metric(ratio.sum()),
        "clip_low_tokens": _metric(clip_low_tokens),
        "clip_high_tokens": _metric(clip_high_tokens),
        "dual_clip_tokens": _metric(dual_clip_tokens),
        "pg_loss": _metric(loss),
    }
    return loss, metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """(N,) per-token estimate of KL(π ‖ π_ref) from samples of π.

    "k1": log π − log π_ref (unbiased, can be negative). "k3": exp(d) − d − 1 with d = log π_ref − log π
    (unbiased and never negative).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")
    _check_tokens(logprobs=logprobs, ref_logprobs=ref_logprobs)
    if kind == "k1":
        return logprobs - ref_logprobs
    d = ref_logprobs - logprobs
    return d.exp() - d - 1.0


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, seq_index: torch.Tensor, *,
               mode: str, norm: Normalizer, clip: float | None = 0.2) -> tuple[torch.Tensor, Metrics]:
    """PPO value loss with value clipping, aggregated with `aggregate`.

    values: (N,) predictions with gradient; old_values: (N,) predictions of the sampling-time critic; returns: (N,)
    targets (both detached here). Per token 0.5·max((v − R)², (old + clip(v − old, −clip, clip) − R)²); clip None
    or 0 gives 0.5·(v − R)². A token counts in vf_clip_tokens when the clipped term is strictly the larger.
    Metrics: tokens, vf_loss, vf_clip_tokens, value_mean_sum (Σ v), return_sum (Σ R), value_error_sq_sum (Σ (v − R)²).
    """
    _check_tokens(seq_index, values=values, old_values=old_values, returns=returns)
    if clip is not None and clip < 0:
        raise ValueError(f"clip must be >= 0 (0 or None disables it), got {clip}")
    returns = returns.detach()
    unclipped = (values - returns).square()
    per_token, clipped_tokens = unclipped, 0
    if clip:
        old_values = old_values.detach()
        clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns).square()
        per_token = torch.maximum(unclipped, clipped)
        clipped_tokens = (clipped > unclipped).sum()
    loss = aggregate(0.5 * per_token, seq_index, mode, norm)
    metrics = {
        "tokens": _metric(values.numel()),
        "vf_loss": _metric(loss),
        "vf_clip_tokens": _metric(clipped_tokens),
        "value_mean_sum": _metric(values.sum()),
        "return_sum": _metric(returns.sum()),
        "value_error_sq_sum": _metric(unclipped.sum()),
    }
    return loss, metrics
