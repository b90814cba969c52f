"""Sampling parameters and the batched next-token choice: penalties, temperature, top-k/top-p/min-p, logprobs.

Every row of a batch carries its own parameters. Randomness is counter-based: the uniform number that picks the
token of a request at sequence position p is a hash of (seed, p), and the token is drawn by inverting the CDF of the
filtered distribution with it. A seeded request therefore yields the same tokens whatever else shares its batch,
after preemption and recomputation, and when its history arrives by `extend` instead of as one prompt.

The logprob returned for a token is log_softmax(logits / temperature)[token] in fp32, computed from the raw model
logits, before penalties and before top-k/top-p/min-p filtering (temperature 1 for greedy rows): the same quantity
`Qwen3.token_logprobs` gives the trainer, so importance weights compare like with like.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..cpu import argmax  # row-wise argmax, blocked on CPU

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings.

    temperature 0 means greedy. top_k 0 and top_p 1 and min_p 0 switch those filters off. repetition_penalty
    divides positive (multiplies negative) logits of tokens seen in the prompt or the output; presence_penalty is
    subtracted from the logits of tokens seen in the output (tokens generated since the last add/extend; earlier
    turns count as prompt). stop_token_ids None takes the sampler's default (<|im_end|>); a stop token is kept in
    the output. stop_strings need a `decode` callable on the Sampler. max_total_tokens caps prompt + everything
    generated or forced over the request's life (finish reason "budget").
    """
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    max_total_tokens: int | None = None

    def __post_init__(self):
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if isinstance(self.stop_strings, str):
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        else:
            object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        self.validate()

    def validate(self):
        def bad(name, want):
            raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r}: {want}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_real(self.temperature) or self.temperature < 0:
            bad("temperature", "must be a finite number >= 0 (0 = greedy)")
        if not is_real(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "must be an integer >= 0 (0 = off)")
        if not is_real(self.min_p) or not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if not is_real(self.presence_penalty):
            bad("presence_penalty", "must be a finite number")
        if not is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be a finite number > 0 (1 = off)")
        if not is_int(self.max_new_tokens) or self.max_new_tokens <= 0:
            bad("max_new_tokens", "must be an integer >= 1")
        if self.stop_token_ids is not None and not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative integers")
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            bad("stop_strings", "must be non-empty strings")
        if self.seed is not None and not is_int(self.seed):
            bad("seed", "must be an integer or None")
        if self.max_total_tokens is not None and (not is_int(self.max_total_tokens) or self.max_total_tokens < 2):
            bad("max_total_tokens", "must be an integer >= 2 or None")

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.repetition_penalty != 1

    @property
    def uses_filters(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1 or self.min_p > 0)


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a bijective 64-bit mix with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(seed: int, position: int) -> float:
    """The uniform number in (0, 1) that draws the token at `position` of a request seeded with `seed`."""
    bits = _mix64(_mix64(seed & _MASK64) ^ position) >> 11  # 53 bits
    return (bits + 0.5) / (1 << 53)


@dataclass
class Rows:
    """Per-row parameters of one sampling batch, as tensors on the logits' device (built once per step)."""
    temperature: torch.Tensor | None   # (B,) float32, 1 for greedy rows (the logprob temperature); None if all 1
    greedy: torch.Tensor | None        # (B,) bool, None when no row is greedy
    all_greedy: bool
    uniforms: torch.Tensor | None      # (B,) float64, None when all rows are greedy
    top_k: torch.Tensor | None = None  # (B,) int64, 0 = off; the filters are None when no row uses any
    filtered: torch.Tensor | None = None  # (B,) bool: the row uses a filter (the others are drawn unfiltered)
    sort_width: int | None = None      # candidates kept by top-k (None: min-p only, no sort needed)
    top_p: torch.Tensor | None = None
    min_p: torch.Tensor | None = None
    presence: torch.Tensor | None = None    # (B,) float32; the penalties are None when no row uses any
    repetition: torch.Tensor | None = None
    seen_prompt: torch.Tensor | None = None  # (B, V) bool: token occurs in the prompt (incl. earlier turns)
    seen_output: torch.Tensor | None = None  # (B, V) bool: token occurs in this turn's output

    @classmethod
    def build(cls, params: list[SamplingParams], seeds: list[int], positions: list[int], vocab_size: int,
              device, seen_prompt=None, seen_output=None) -> Rows:
        greedy = [p.temperature == 0 for p in params]
        all_greedy = all(greedy)
        temperatures = [p.temperature or 1.0 for p in params]
        rows = cls(
            temperature=None if all(t == 1 for t in temperatures) else torch.tensor(
                temperatures, dtype=torch.float32, device=device),
            greedy=torch.tensor(greedy, device=device) if any(greedy) and not all_greedy else None,
            all_greedy=all_greedy,
            uniforms=None if all_greedy else torch.tensor(
                [uniform(s, pos) for s, pos in zip(seeds, positions)], dtype=torch.float64, device=device),
        )
        sampled = [p for p in params if p.temperature > 0]
        if any(p.uses_filters for p in sampled):
            if all(p.top_k > 0 for p in sampled):  # every row keeps at most top_k candidates
                rows.sort_width = min(max(p.top_k for p in sampled), vocab_size)
            elif any(p.top_k > 0 or p.top_p < 1 for p in sampled):
                rows.sort_width = vocab_size
            rows.filtered = torch.tensor([p.uses_filters for p in params], device=device)
            rows.top_k = torch.tensor([p.top_k for p in params], dtype=torch.int64, device=device)
            rows.top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
            rows.min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32, device=device)
        if seen_prompt is not None:
            rows.presence = torch.tensor([p.presence_penalty for p in params], dtype=torch.float32, device=device)
            rows.repetition = torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32,
                                           device=device)
            rows.seen_prompt, rows.seen_output = seen_prompt, seen_output
        return rows


def apply_penalties(logits: torch.Tensor, rows: Rows) -> torch.Tensor:
    """Repetition penalty on tokens seen anywhere, then presence penalty on tokens seen in the output."""
    seen = rows.seen_prompt | rows.seen_output
    r = rows.repetition[:, None]
    penalised = torch.where(logits > 0, logits / r, logits * r)
    logits = torch.where(seen, penalised, logits)
    return logits - rows.presence[:, None] * rows.seen_output


def filter_sorted(values: torch.Tensor, rows: Rows) -> torch.Tensor:
    """top-k, then top-p on the renormalised top-k distribution, then min-p, on logits sorted descending.

    Returns the values with removed entries at -inf. The first (largest) entry always survives.
    """
    width = values.shape[-1]
    rank = torch.arange(width, device=values.device)
    k = torch.where(rows.top_k > 0, rows.top_k, width)
    values = values.masked_fill(rank[None, :] >= k[:, None], float("-inf"))
    probs = values.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    drop = mass_before >= rows.top_p[:, None]
    drop |= probs < rows.min_p[:, None] * probs[:, :1]
    return values.masked_fill(drop, float("-inf"))


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    cdf = probs.double().cumsum(-1)
    target = (uniforms * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def sample(logits: torch.Tensor, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (B,) int64 and their logprobs (B,) fp32 for raw model logits (B, V)."""
    def over_temperature(x):
        return x if rows.temperature is None else x / rows.temperature[:, None]

    scaled = over_temperature(logits.float())
    lse = scaled.logsumexp(-1)
    if rows.all_greedy and rows.seen_prompt is None:  # the usual greedy step: the maximum is the chosen logit
        tokens, top = argmax(scaled)
        return tokens, top - lse
    adjusted = scaled
    if rows.seen_prompt is not None:
        adjusted = over_temperature(apply_penalties(logits.float(), rows))

    if rows.all_greedy:
        tokens = argmax(adjusted)[0]
    else:
        # Every sampled row draws from its own distribution in vocabulary order with the same formula, so a seeded
        # request gets the same token whatever its batch-mates' settings.
        allowed = _apply_filters(adjusted, rows) if rows.top_k is not None else adjusted
        tokens = _inverse_cdf(allowed.softmax(-1), rows.uniforms)
        if rows.greedy is not None:
            tokens = torch.where(rows.greedy, argmax(adjusted)[0], tokens)
    logprobs = scaled.gather(-1, tokens[:, None]).squeeze(-1) - lse
    return tokens, logprobs


def _apply_filters(adjusted: torch.Tensor, rows: Rows) -> torch.Tensor:
    """The logits with the entries each filtering row removes set to -inf (rows without filters unchanged)."""
    if rows.sort_width is None:  # min-p alone needs no sort: it compares each probability with the row's largest
        probs = adjusted.softmax(-1)
        keep = probs >= rows.min_p[:, None] * probs.max(-1, keepdim=True).values
    else:
        values, order = adjusted.topk(rows.sort_width, dim=-1, sorted=True)
        kept = filter_sorted(values, rows) > float("-inf")
        keep = torch.zeros_like(adjusted, dtype=torch.bool).scatter(-1, order, kept)
    return adjusted.masked_fill(~(keep | ~rows.filtered[:, None]), float("-inf"))
