"""Advantages: group-relative (GRPO, Dr. GRPO) per trajectory, and GAE per token for a learned value.

The GRPO recipe is docs/protocol.md section 5: n samples per prompt, A = (r − group mean) / (unbiased group std +
1e-6); groups whose rewards are all equal (all correct, all wrong, or a single sample) get exactly A = 0.
"""
from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "mean")


def _check_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    if rewards.ndim != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor, got shape {tuple(rewards.shape)} {rewards.dtype}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids must have the shape of rewards {tuple(rewards.shape)}, "
                         f"got {tuple(group_ids.shape)}")
    if group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")


def _group_reduce(values: torch.Tensor, inverse: torch.Tensor, groups: int, reduce: str) -> torch.Tensor:
    """(groups,) reduction ("sum", "amax", "amin") of values (B,) by dense group index inverse (B,)."""
    out = values.new_zeros(groups)
    return out.scatter_reduce(0, inverse, values, reduce=reduce, include_self=False)


def zero_variance(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True where the trajectory's group has all-equal rewards (groups of one included).

    rewards: (B,) float; group_ids: (B,) integer, the prompt each trajectory belongs to (any ids, any order).
    """
    _check_groups(rewards, group_ids)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return _constant_groups(rewards, inverse, counts.numel())


def _constant_groups(rewards: torch.Tensor, inverse: torch.Tensor, groups: int) -> torch.Tensor:
    """(B,) bool: the group (dense index inverse (B,)) has max reward == min reward."""
    high = _group_reduce(rewards, inverse, groups, "amax")
    low = _group_reduce(rewards, inverse, groups, "amin")
    return (high == low)[inverse]


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, estimator: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    """(B,) advantages of trajectories relative to the other samples of their prompt.

    rewards: (B,) float; group_ids: (B,) integer. Groups may differ in size and interleave; ids need not be
    contiguous. estimator "grpo": (r − group mean) / (std + eps), std unbiased (N − 1); "mean" (Dr. GRPO):
    r − group mean. Zero-variance groups (see `zero_variance`) give exactly 0, not a rounding residue.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    _check_groups(rewards, group_ids)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    counts = counts.to(rewards.dtype)
    mean = _group_reduce(rewards, inverse, counts.numel(), "sum") / counts
    centred = rewards - mean[inverse]
    if estimator == "grpo":
        # A group of one has no spread to divide by; it is zeroed below, the clamp only avoids 0/0.
        var = _group_reduce(centred.square(), inverse, counts.numel(), "sum") / (counts - 1).clamp(min=1)
        centred = centred / (var.sqrt()[inverse] + eps)
    return centred.masked_fill(_constant_groups(rewards, inverse, counts.numel()), 0.0)


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the sampled tokens of one trajectory.

    values, rewards: (T,) float over the response tokens; mask: (T,) 1/True on tokens the policy sampled, 0 on
    forced tokens (tool responses). The recursion runs over the sampled tokens as if the forced ones were not there:
    a sampled token's next value is the value at the next sampled token, and 0 after the last one. Forced tokens
    must carry zero reward; they get advantage 0 and return 0.
    Returns (advantages, returns), both (T,) with no gradient; returns = advantages + values on sampled tokens.
    """
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D (T,), got shape {tuple(values.shape)}")
    for name, tensor in (("rewards", rewards), ("mask", mask)):
        if tensor.shape != values.shape:
            raise ValueError(f"{name} must have the shape of values {tuple(values.shape)}, got {tuple(tensor.shape)}")
    sampled = mask.bool()
    if bool((rewards.masked_select(~sampled) != 0).any()):
        raise ValueError("rewards must be 0 on tokens with mask 0 (forced tokens carry no reward)")
    # The recursion is sequential; run it on Python floats over the compacted sampled tokens.
    values = values.detach()
    v = values.masked_select(sampled).tolist()
    r = rewards.detach().masked_select(sampled).tolist()
    adv = [0.0] * len(v)
    running, next_value = 0.0, 0.0
    for t in reversed(range(len(v))):
        delta = r[t] + gamma * next_value - v[t]
        running = delta + gamma * lam * running
        adv[t] = running
        next_value = v[t]
    compact = torch.tensor(adv, dtype=values.dtype, device=values.device)
    advantages = torch.zeros_like(values).masked_scatter(sampled, compact)
    returns = torch.zeros_like(values).masked_scatter(sampled, compact + values[sampled])
    return advantages, returns
