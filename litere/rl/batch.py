"""Trajectories -> packed training micro-batches: the token stream, the positions whose targets the policy sampled,
their rollout logprobs, and the per-token values the loss needs (filled in as the step computes them).

A trajectory's stream is prompt + response; input token t predicts token t + 1, so the loss of response token j
sits at input position len(prompt) + j - 1. Only sampled tokens (response mask 1) carry a loss; tool responses and
other forced segments are context. A trajectory is never split across micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..agent.trajectory import Trajectory
from ..train.sft_data import first_fit_decreasing


@dataclass
class Sample:
    """One trajectory as the trainer sees it; `values` holds its per-token tensors (N,) by name: "rollout",
    "old", "tis", "advantages", "ref", "old_values", "returns"."""
    input_ids: np.ndarray  # (L - 1,) int64: prompt + response without the last token
    loss_positions: np.ndarray  # (N,) int64: input positions whose next token was sampled
    targets: np.ndarray  # (N,) int64: those sampled tokens
    reward: float
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return len(self.targets)


def to_sample(t: Trajectory) -> Sample:
    tokens = np.asarray(t.prompt_ids + t.response_ids, dtype=np.int64)
    sampled = np.flatnonzero(np.asarray(t.response_mask, dtype=np.int64))
    positions = len(t.prompt_ids) + sampled - 1
    rollout = torch.tensor(t.rollout_logprobs, dtype=torch.float32)[torch.from_numpy(sampled)]
    return Sample(tokens[:-1], positions, tokens[len(t.prompt_ids) + sampled], float(t.reward or 0.0),
                  {"rollout": rollout})


@dataclass
class MicroBatch:
    """Samples packed into one flat stream (T,) with per-sample positions; the loss tensors are (N,) over the loss
    tokens of all its samples in order, `seq_index` naming the local sample 0..S-1 of each. A padding micro-batch
    (a rank with less work than another) has one token and no samples."""
    input_ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    seqlens: list[int]
    loss_positions: torch.Tensor  # (N,) indices into the stream
    targets: torch.Tensor  # (N,)
    seq_index: torch.Tensor  # (N,)
    members: list[int]  # indices of the step's samples, in seq_index order

    @property
    def is_padding(self) -> bool:
        return not self.members

    def gather(self, samples: list[Sample], name: str) -> torch.Tensor:
        """The per-token tensor `name` of the members, concatenated (N,) on the batch's device."""
        return torch.cat([samples[i].values[name] for i in self.members]).to(self.input_ids.device)

    def scatter(self, samples: list[Sample], name: str, values: torch.Tensor):
        """Store the per-token tensor (N,) `values` under `name` in each member sample (detached, on the CPU)."""
        sizes = [samples[i].num_loss_tokens for i in self.members]
        for i, part in zip(self.members, values.detach().float().cpu().split(sizes)):
            samples[i].values[name] = part


def micro_batch(samples: list[Sample], members: list[int], device) -> MicroBatch:
    if not members:
        one = torch.zeros(1, dtype=torch.long, device=device)
        return MicroBatch(one, one, [1], one, one, one, [])
    offsets = np.cumsum([0] + [samples[i].num_tokens for i in members])
    ids = np.concatenate([samples[i].input_ids for i in members])
    positions = np.concatenate([np.arange(samples[i].num_tokens) for i in members])
    loss_positions = np.concatenate([samples[i].loss_positions + offsets[k] for k, i in enumerate(members)])
    targets = np.concatenate([samples[i].targets for i in members])
    seq_index = np.concatenate([np.full(samples[i].num_loss_tokens, k) for k, i in enumerate(members)])

    def tensor(x):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(device)

    return MicroBatch(tensor(ids), tensor(positions), [samples[i].num_tokens for i in members],
                      tensor(loss_positions), tensor(targets), tensor(seq_index), list(members))


def pack(samples: list[Sample], members: list[int], pack_tokens: int) -> list[list[int]]:
    """First-fit decreasing into micro-batches of at most pack_tokens input tokens (a longer sample alone)."""
    return [sorted(b) for b in first_fit_decreasing(members, lambda m: samples[m].num_tokens, pack_tokens)]


def split_groups(group_of: list[int], parts: int) -> list[list[int]]:
    """Sample indices split into `parts` mini-batches of whole groups, as even in samples as the groups allow
    (a rank may hold fewer groups than parts: some mini-batches are then empty)."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_of):
        groups.setdefault(g, []).append(i)
    ordered = list(groups.values())
    out: list[list[int]] = [[] for _ in range(parts)]
    for k, members in enumerate(ordered):
        out[k * parts // max(1, len(ordered))].extend(members)
    return out


def sampled_logprobs(model, mb: MicroBatch, temperature: float, entropy: bool = False):
    """log softmax(logits / temperature) of the sampled tokens (N,), fp32: the trainer's side of the ratio; with
    `entropy`, also the entropy (N,) of each of those tokens' distributions."""
    hidden = model(mb.input_ids, mb.positions, seqlens=mb.seqlens)
    return model.token_logprobs(hidden[mb.loss_positions], mb.targets, temperature, entropy=entropy)
