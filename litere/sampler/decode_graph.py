"""The sampler's decode step compiled into one graph with torch.compile (`Sampler(compile=...)`).

A decode step runs every layer for one new token per sequence. Eagerly, each of the model's small operations is a
separate dispatch (about 1,200 per step on the `tiny` preset); compiled, the elementwise work between the matmuls fuses
into a few dozen C++ (CPU) or Triton (CUDA) kernels, and with mode "reduce-overhead" on CUDA the step is replayed as a
CUDA graph.

The compiled function is pure: it reads the paged cache and returns the new tokens' k/v, which `CompiledDecode` then
writes into the cache with one copy for all layers. (Writing inside the graph would make the compiler treat the whole
cache as a mutated input and copy it.) Attention of the new token is written as plain tensor operations: scores
against the cached keys, gathered through the block table inside the fused reduction that consumes them, and against
its own key, merged in one softmax.

Shapes are dynamic: batch size, block-table width and cache size are symbols, so continuous batching, growing
contexts and samplers of other cache sizes reuse one compiled graph (per model configuration and dtype). The table
is given at least two columns, so that a width of one is never specialised; batch size one gets its own graph
(compiled once, on first use).

The first result of each graph is checked against the same step run eagerly (`CompiledDecodeMismatch` when they
disagree): a bad entry in torch's on-disk compile cache has been seen to give NaN logits from a graph that compiled
without complaint (BENCHMARKS.md, "A bad entry in torch's compile cache").
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from .. import cpu
from .kv_cache import PagedKVCache

MODES = ("default", "reduce-overhead")  # reduce-overhead: CUDA graphs
# the largest difference from the eager step, relative to the eager result's largest magnitude, that a graph's first
# result may show: reordered float sums stay far below it, a miscompiled kernel's garbage far above
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
LOW_PRECISION_TOLERANCE = 0.1  # bf16 and fp16: 0.01 measured on the tests' small model


class CompiledDecodeMismatch(RuntimeError):
    """The compiled decode step's first result for a shape disagrees with the eager step's."""


class DecodeAttention:
    """An `AttentionCache` (litere.model) for one new token per sequence that does not write to the cache: it
    collects the new k/v in `new_kv` for the caller to write.

    data: the cache tensor (layers, 2, num_blocks, block_size, kv_heads, head_dim); block_table (B, n_blocks);
    context_lens (B,) tokens of each sequence including the new one, whose k/v are not in the cache yet.
    """

    def __init__(self, data: torch.Tensor, block_table: torch.Tensor, context_lens: torch.Tensor):
        self.data, self.block_table, self.context_lens = data, block_table, context_lens
        self.new_kv: list[torch.Tensor] = []

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.new_kv.append(torch.stack((k, v)))
        n_seqs, n_heads, dim = q.shape
        n_kv = k.shape[1]
        group = n_heads // n_kv
        block_size, width = self.data.shape[3], self.block_table.shape[1]
        cached_k = self.data[layer, 0][self.block_table].view(n_seqs, width * block_size, n_kv, 1, dim).float()
        cached_v = self.data[layer, 1][self.block_table].view(n_seqs, width * block_size, n_kv, 1, dim).float()
        q = q.view(n_seqs, 1, n_kv, group, dim).float() * dim ** -0.5
        scores = (q * cached_k).sum(-1)  # (B, keys, Hkv, group)
        key_pos = torch.arange(width * block_size, device=q.device)
        scores = scores.masked_fill(key_pos[None, :, None, None] >= self.context_lens[:, None, None, None] - 1,
                                    float("-inf"))
        own = (q[:, 0] * k.view(n_seqs, n_kv, 1, dim).float()).sum(-1)  # (B, Hkv, group)
        top = torch.maximum(scores.amax(1), own)  # finite: the own score always is
        weights, own_weight = (scores - top[:, None]).exp(), (own - top).exp()
        out = (weights[..., None] * cached_v).sum(1) + own_weight[..., None] * v.view(n_seqs, n_kv, 1, dim).float()
        out = out / (weights.sum(1) + own_weight)[..., None]
        return out.reshape(n_seqs, n_heads, dim).to(k.dtype)


def decode_step(model, input_ids, positions, block_table, context_lens, data):
    """Hidden states (B, hidden) of one new token per sequence, and their k/v (layers, 2, B, kv_heads, head_dim)."""
    attention = DecodeAttention(data, block_table, context_lens)
    hidden = model(input_ids, positions, cache=attention)
    return hidden, torch.stack(attention.new_kv)


class CompiledDecode:
    """A compiled `decode_step` bound to one model and one cache.

    With CUDA graphs (mode "reduce-overhead") a graph is recorded for each distinct input shape, so the batch and the
    block-table width are padded up to powers of two (`pad_shapes`): padded rows are one-token sequences whose
    outputs are dropped. The cache is marked as a static input, so that replays read it in place instead of copying.
    """

    def __init__(self, model, cache: PagedKVCache, mode: str = "default"):
        if mode not in MODES:
            raise ValueError(f"Sampler compile={mode!r}: expected one of {', '.join(MODES)}")
        device = cache.data.device
        if mode == "reduce-overhead" and device.type != "cuda":
            raise ValueError(f"Sampler compile={mode!r} captures CUDA graphs; on {device.type} use 'default'")
        self.model, self.cache, self.graphs = model, cache, mode == "reduce-overhead"
        self.pad_shapes = self.graphs
        if self.graphs:
            torch._dynamo.mark_static_address(cache.data)
        if device.type == "cpu":
            cpu.separate_compile_cache()
        self._step = _compiled_step(model, device, mode)
        self._checked: set = set()  # the graphs whose first result matched the eager step

    def __call__(self, input_ids, positions, slots, block_table, context_lens) -> torch.Tensor:
        # own storage: views into the sampler's step buffers would make their offsets part of the guards
        input_ids, positions, context_lens = input_ids.clone(), positions.clone(), context_lens.clone()
        n_seqs, width = block_table.shape
        rows = _next_power_of_two(n_seqs) if self.pad_shapes else n_seqs
        width = max(2, _next_power_of_two(width) if self.pad_shapes else width)  # 2: a width of 1 is specialised
        if rows > n_seqs or width > block_table.shape[1]:
            input_ids, positions = F.pad(input_ids, (0, rows - n_seqs)), F.pad(positions, (0, rows - n_seqs))
            context_lens = F.pad(context_lens, (0, rows - n_seqs), value=1)
            block_table = F.pad(block_table, (0, width - block_table.shape[1], 0, rows - n_seqs))
        for t in (input_ids, positions, block_table, context_lens):  # everything else keeps its static size
            torch._dynamo.maybe_mark_dynamic(t, 0)
        torch._dynamo.maybe_mark_dynamic(block_table, 1)
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        else:
            torch._dynamo.maybe_mark_dynamic(self.cache.data, 2)  # the number of blocks: samplers of any cache size
        hidden, new_kv = self._step(self.model, input_ids, positions, block_table, context_lens, self.cache.data)
        graph = (rows, width) if self.graphs else rows == 1  # without CUDA graphs: one graph for a batch of one
        if graph not in self._checked:
            # a few rows (the first, the middle, the last real one): the eager step holds its rows' cache in fp32
            picked = torch.tensor(sorted({i for i in (0, 1, 2, n_seqs // 2, n_seqs - 1) if i < n_seqs}),
                                  device=hidden.device)
            rows_in = (t.index_select(0, picked) for t in (input_ids, positions, block_table, context_lens))
            eager = decode_step(self.model, *rows_in, self.cache.data)
            _check_against_eager((hidden[picked], new_kv[:, :, picked]), eager, rows)
            self._checked.add(graph)
        self.cache.write_all_layers(slots, new_kv[:, :, :n_seqs])
        return hidden[:n_seqs]


def _check_against_eager(compiled: tuple, eager: tuple, rows: int):
    """Raises `CompiledDecodeMismatch` when the compiled (hidden, new_kv) stray from the eager ones beyond rounding.
    An eager tensor that is itself not finite is no verdict on the compiler: it is skipped, the other still compared."""
    limit = TOLERANCE.get(eager[0].dtype, LOW_PRECISION_TOLERANCE)
    for name, got, expected in zip(("hidden states", "new keys and values"), compiled, eager):
        expected, got = expected.float(), got.float()
        if not expected.isfinite().all():
            continue
        scale = expected.abs().max().clamp_min(1e-6)
        error = ((got - expected).abs().max() / scale).item()
        if not error <= limit:  # NaN included
            bad = (~got.isfinite()).sum().item()
            raise CompiledDecodeMismatch(
                f"the compiled decode step disagrees with the eager one on its first batch of {rows} "
                f"({name}: largest difference {error:.3g} of the largest value, {bad} not finite). A bad entry in "
                "torch's compile cache can do this: clear it (TORCHINDUCTOR_CACHE_DIR, by default "
                "/tmp/torchinductor_<user>) or set TORCHINDUCTOR_FORCE_DISABLE_CACHES=1")


_COMPILED: dict[tuple, object] = {}


def _compiled_step(model, device, mode):
    """The compiled `decode_step` for the model's configuration and dtype, the device and the mode.

    Each gets its own copy of the function: dynamo keeps the graphs of one code object under a limit of 8
    (torch._dynamo.config.recompile_limit), which fullgraph=True turns into an error, so a process that samples
    from several model shapes must not share one budget.
    """
    key = (repr(model.config), model.model.embed_tokens.weight.dtype, device.type, mode)
    if key not in _COMPILED:
        copy = types.FunctionType(decode_step.__code__.replace(), decode_step.__globals__, decode_step.__name__)
        _COMPILED[key] = torch.compile(copy, mode=None if mode == "default" else mode, dynamic=False, fullgraph=True)
    return _COMPILED[key]


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()
