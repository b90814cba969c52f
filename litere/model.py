"""Qwen3 in plain PyTorch, shared by the trainer and the sampler.

Tokens travel as one flat packed stream of shape (T,): documents are delimited by `seqlens` (training) or by the
KV cache (sampling), and no token attends across documents. Module names equal the Hugging Face checkpoint keys.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import kernels

from . import cpu
from .config import ModelConfig
from .cpu import linear  # F.linear, in the layout the host runs fastest for decode-sized batches


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps)


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sign-folded sin of shape (T, 1, head_dim), computed in fp32 and cast to the activation dtype.

    The first half of sin is negated, so that `apply_rotary` needs no concatenation: Hugging Face's
    rotate_half(x) * sin equals swap_halves(x) * folded_sin exactly (negation commutes with rounding).
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1)[:, None].to(dtype), torch.cat((-sin, sin), -1)[:, None].to(dtype)


def apply_rotary(x, cos, sin):
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)


@runtime_checkable
class AttentionCache(Protocol):
    """What `Qwen3.forward(..., cache=...)` attends through when sampling, in place of packed documents.

    Each attention layer calls `attend` once with its index and the new tokens' q (T, Hq, D) and k/v (T, Hkv, D),
    after rotary embedding; the cache keeps the k/v it needs and returns the attention output (T, Hq, D) of the new
    tokens over their sequences' earlier and new keys. Implemented by the sampler's `CacheStep` (kv_cache.py) and
    `DecodeAttention` (decode_graph.py).
    """

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class Layout(NamedTuple):
    """Where each token's keys live: packed documents (`cu_seqlens`) or a KV cache."""
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    cache: AttentionCache | None = None


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def attend(self, q, k, v, layout: Layout):
        if layout.cache is not None:
            return layout.cache.attend(self.layer_idx, q, k, v)
        return kernels.attention(q, k, v, layout.cu_seqlens, layout.max_seqlen)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.compiled = False  # see Qwen3.compile_blocks

    def forward(self, x, cos, sin, layout: Layout):
        attn, mlp = self.self_attn, self.mlp
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        before, after = _compiled_block_parts() if self.compiled and layout.cache is None else (
            _attention_inputs, _attention_output_and_mlp)
        q, k, v = before(x, cos, sin, norm1.weight, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
                         attn.q_norm.weight, attn.k_norm.weight, norm1.eps, attn.n_heads, attn.n_kv_heads)
        return after(x, attn.attend(q, k, v, layout), attn.o_proj.weight, norm2.weight, mlp.gate_proj.weight,
                     mlp.up_proj.weight, mlp.down_proj.weight, norm2.eps)


def _attention_inputs(x, cos, sin, norm, q_proj, k_proj, v_proj, q_norm, k_norm, eps, n_heads, n_kv_heads):
    """A block's q (T, Hq, D) and k/v (T, Hkv, D): its input norm, projections, q/k norms and rotary embedding."""
    T = x.shape[0]
    h = kernels.rms_norm(x, norm, eps)
    q = linear(h, q_proj).reshape(T, n_heads, -1)
    k = linear(h, k_proj).reshape(T, n_kv_heads, -1)
    v = linear(h, v_proj).reshape(T, n_kv_heads, -1)
    q = apply_rotary(kernels.rms_norm(q, q_norm, eps), cos, sin)
    return q, apply_rotary(kernels.rms_norm(k, k_norm, eps), cos, sin), v


def _attention_output_and_mlp(x, attended, o_proj, norm, gate_proj, up_proj, down_proj, eps):
    """The rest of a block: the attention output's projection and residual, then the SwiGLU MLP's."""
    x = x + linear(attended.flatten(-2), o_proj)
    h = kernels.rms_norm(x, norm, eps)
    return x + linear(F.silu(linear(h, gate_proj)) * linear(h, up_proj), down_proj)


@functools.cache
def _compiled_block_parts():
    """The two parts of a block around attention, compiled once for every block and every length (dynamic shapes,
    the weights passed in): the compiler fuses their norms, rotary, SwiGLU and residual adds. Attention stays eager:
    its per-document loop (kernels.reference.attention) would make a graph per batch layout."""
    cpu.separate_compile_cache()  # acts only where ATEN_CPU_CAPABILITY is set
    return (torch.compile(_attention_inputs, dynamic=True), torch.compile(_attention_output_and_mlp, dynamic=True))


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Qwen3(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def compile_blocks(self):
        """Run every block's work around attention through torch.compile in training forwards (packed documents);
        sampling (through a KV cache) keeps the eager code, which the sampler compiles as a whole if asked."""
        for block in self.model.layers:
            block.compiled = True

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None):
        """Random init for training from scratch: normal(0, std) matrices, unit norms."""
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=generator)

    def forward(self, input_ids, positions, *, cache: AttentionCache | None = None, seqlens=None, targets=None,
                temperature=1.0):
        """Hidden states after the final norm, shaped like `input_ids` + (hidden,).

        input_ids/positions: (T,) packed stream or (B, T) rows of one document each. `seqlens` splits the
        flattened stream into documents; `cache` (an `AttentionCache`) replaces it when sampling. Given `targets`,
        returns their `token_logprobs` instead (so that the head runs inside forward, where sharded wrappers have
        gathered its weights).
        """
        if positions.shape != input_ids.shape:
            raise ValueError(f"positions shape {tuple(positions.shape)} != input_ids shape {tuple(input_ids.shape)}")
        ids, pos = input_ids.reshape(-1), positions.reshape(-1)
        layout = Layout(cache=cache) if cache is not None else self._packed_layout(input_ids, seqlens)
        x = self.model.embed_tokens(ids)
        cos, sin = rotary_tables(pos, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, layout)
        hidden = self.model.norm(x).view(*input_ids.shape, -1)
        if targets is not None:
            return self.token_logprobs(hidden, targets, temperature)
        return hidden

    @staticmethod
    def _packed_layout(input_ids, seqlens) -> Layout:
        n = input_ids.numel()
        if seqlens is None:
            row = input_ids.shape[-1]
            lengths = torch.full((n // row,), row, dtype=torch.int32)
        else:
            lengths = torch.as_tensor(seqlens, dtype=torch.int32).reshape(-1)
            if int(lengths.sum()) != n or bool((lengths <= 0).any()):
                raise ValueError(f"seqlens {lengths.tolist()} must be positive and sum to the {n} tokens given")
        cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)).to(input_ids.device)
        return Layout(cu_seqlens=cu_seqlens, max_seqlen=int(lengths.max()))

    def logits(self, hidden):
        if hidden.dim() == 2:  # rows of tokens, as the sampler asks; `linear` may return a transposed view, and
            # the reductions over the vocabulary want contiguous rows
            return linear(hidden, self.lm_head.weight).contiguous()
        return self.lm_head(hidden)

    def token_logprobs(self, hidden, targets, temperature: float = 1.0, chunk: int = 1024, entropy: bool = False):
        """log softmax(logits / temperature)[target] in fp32, computed `chunk` tokens at a time; with `entropy`, also
        the entropy of each token's distribution (a pair of tensors shaped like `targets`).

        Each chunk's full-vocabulary logits exist only while that chunk is computed (and are recomputed in
        backward), so a long sequence never holds (T, vocab) fp32 logits.
        """
        if targets.shape != hidden.shape[:-1]:
            raise ValueError(f"targets shape {tuple(targets.shape)} != hidden shape {tuple(hidden.shape[:-1])}")
        flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        weight = self.lm_head.weight
        pieces = []
        for start in range(0, flat_t.numel(), chunk):
            h, t = flat_h[start:start + chunk], flat_t[start:start + chunk]
            if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
                pieces.append(checkpoint(_chunk_logprobs, h, t, weight, temperature, entropy, use_reentrant=False))
            else:
                pieces.append(_chunk_logprobs(h, t, weight, temperature, entropy))
        if not pieces:
            empty = hidden.new_zeros(targets.shape, dtype=torch.float32)
            return (empty, empty.clone()) if entropy else empty
        logprobs = torch.cat([p[0] for p in pieces]).view(targets.shape)
        if not entropy:
            return logprobs
        return logprobs, torch.cat([p[1] for p in pieces]).view(targets.shape)


def _chunk_logprobs(h, t, weight, temperature, entropy):
    logits = F.linear(h, weight).float() / temperature
    if not entropy:
        return (logits.gather(-1, t[:, None]).squeeze(-1) - logits.logsumexp(-1),)
    normalised = logits - logits.logsumexp(-1, keepdim=True)
    return normalised.gather(-1, t[:, None]).squeeze(-1), -(normalised.exp() * normalised).sum(-1)
