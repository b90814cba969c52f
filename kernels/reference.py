"""PyTorch reference implementations of the kernels: the ground truth for tests and the path used off CUDA."""
from typing import NamedTuple

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension with Hugging Face numerics: fp32 statistics, cast back, then scale."""
    if x.dtype == weight.dtype == torch.float32:  # the same arithmetic in one call, with no casts to dispatch
        return F.rms_norm(x, x.shape[-1:], weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """Causal attention over documents packed along dim 0: q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    bounds = cu_seqlens.tolist()
    lengths = {b - a for a, b in zip(bounds[:-1], bounds[1:])}
    if len(lengths) == 1:  # equal-length documents: one batched call
        n_docs, length = len(bounds) - 1, lengths.pop()
        qb, kb, vb = (t.view(n_docs, length, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale, enable_gqa=True)
        return out.transpose(1, 2).reshape(q.shape)
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        # 4-D (batch of one): on CPU, 3-D inputs take SDPA's math path, several times slower than its flash kernel
        qd, kd, vd = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=True)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, scale=None):
    """New query tokens of B sequences against their paged KV cache (which already holds the new tokens' k/v).

    q (Tq, Hq, D) packed by sequence; k_cache/v_cache (num_blocks, block_size, Hkv, D); block_table (B, max_blocks);
    seqlens_k (B,) total cached lengths. Query i of sequence b (n_b new tokens) sits at seqlens_k[b] - n_b + i.

    Sequences with the same number of new tokens (all decoding ones, equal-length prompts) form a group, so a long
    prefill never pads the short ones. Within a group, a sequence whose keys are large and lie in consecutive blocks
    (the block manager allocates that way) is attended in place, without copying its keys; its blocks may form a
    few separate runs (a sample sharing its prompt's blocks has two), whose partial results are merged by their
    log-sum-exp. The other sequences are gathered a few at a time, so that the copied k/v are still in cache when
    one batched SDPA reads them. The GQA group is folded into the query axis (B, Hkv, n * group, D) rather than
    passed as enable_gqa, which on CPU takes a path several times slower in bf16. The layout work (grouping, runs,
    masks) depends only on the step, not the layer: it is planned once and reused (see `_plan`).
    """
    n_heads, dim = q.shape[1], q.shape[2]
    n_kv = k_cache.shape[2]
    plan = _plan(block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, q.shape[0], n_heads // n_kv,
                 k_cache.shape[1], k_cache[0].numel() * k_cache.element_size(), q.dtype)
    if len(plan) == 1 and plan[0].tokens is None:
        group = plan[0]
        return _attend_group(q.view(group.n_seqs, group.n, n_heads, dim), k_cache, v_cache, group, scale)
    out = torch.empty_like(q)
    for group in plan:
        out[group.tokens] = _attend_group(q[group.tokens].view(group.n_seqs, group.n, n_heads, dim), k_cache, v_cache,
                                          group, scale)
    return out


class _Gathered(NamedTuple):
    """Consecutive sequences of a group whose blocks are copied out and attended in one batched call."""
    rows: slice
    blocks: torch.Tensor  # (n_rows * n_blocks,) cache blocks to gather, row-major
    n_blocks: int
    mask: torch.Tensor  # additive, broadcastable to the scores (n_rows, Hkv, n * group, keys)


class _InPlace(NamedTuple):
    """One sequence attended where its keys lie: runs of consecutive blocks, (first block, blocks, keys) each."""
    row: int
    runs: list
    mask: torch.Tensor | None  # n > 1: the additive causal mask (n * group, keys); None for a decoding token


class _Group(NamedTuple):
    """Sequences with the same number n of new tokens, in pieces that together cover them in order."""
    n: int
    n_seqs: int
    tokens: torch.Tensor | None  # their rows of q, in order; None: every row of q, in order
    pieces: list


_GATHER_BYTES = 2 << 20
# A sequence's k+v bytes (one layer) from which reading them in place, one SDPA call per sequence, beats copying
# them out for a batched call. A size in bytes, not tokens: measured on CPU, the crossover fell at about the same
# k+v size for the `tiny` preset and the 0.6B shape (BENCHMARKS.md, sampler section, has the figures).
_IN_PLACE_BYTES = 192 << 10
_MAX_RUNS = 4
_last_plan: list = [None, None, None]  # [copies of the layout tensors, the other arguments, the plan]


def _plan(block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, n_tokens, group, block_size, block_bytes, dtype):
    """The layout work of a paged_attention call, reused by the next calls with equal layout tensors.

    A model calls paged_attention once per layer with the same layout. The memo compares contents (the tensors are
    small) rather than identities, so a caller may rewrite its layout tensors in place between calls.
    """
    tensors = (block_table, cu_seqlens_q, seqlens_k)
    key = (max_seqlen_q, n_tokens, group, block_size, block_bytes, dtype)
    copies, cached_key, plan = _last_plan
    if cached_key == key and all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
                                 for a, b in zip(copies, tensors)):
        return plan
    layout = _Layout(group, block_size, block_bytes, dtype, block_table.device)
    plan = _build_plan(block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, n_tokens, layout)
    _last_plan[:] = [tuple(t.clone() for t in tensors), key, plan]
    return plan


class _Layout(NamedTuple):
    group: int  # query heads per kv head
    block_size: int
    block_bytes: int  # bytes of one block of k (or v)
    dtype: torch.dtype
    device: torch.device


def _build_plan(block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, n_tokens, layout: _Layout):
    n_seq = block_table.shape[0]
    lengths = seqlens_k.tolist()
    if max_seqlen_q == 1 and n_tokens == n_seq:  # pure decode: skip the grouping
        return [_group(1, None, block_table, seqlens_k, lengths, layout)]
    bounds = cu_seqlens_q.tolist()
    by_length: dict[int, list[int]] = {}
    for seq, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        by_length.setdefault(b - a, []).append(seq)
    if len(by_length) == 1:
        return [_group(bounds[1] - bounds[0], None, block_table, seqlens_k, lengths, layout)]
    plan = []
    device = layout.device
    for n, seqs in by_length.items():
        if n == 0:
            continue
        rows = torch.tensor(seqs, device=device)
        tokens = (torch.tensor([bounds[s] for s in seqs], device=device)[:, None]
                  + torch.arange(n, device=device)[None, :]).reshape(-1)
        plan.append(_group(n, tokens, block_table[rows], seqlens_k[rows], [lengths[s] for s in seqs], layout))
    return plan


def _group(n, tokens, block_table, seqlens_k, lengths, layout: _Layout):
    """Split a group's sequences into in-place ones and chunks of gathered ones, in order."""
    n_seq, bs = len(lengths), layout.block_size
    n_blocks = [-(-length // bs) for length in lengths]
    ids = block_table[:, :max(n_blocks)].tolist()
    template = None  # n > 1: the causal mask of the longest sequence; shorter ones see its last columns
    pieces, gathered = [], []
    for row, length in enumerate(lengths):
        runs = _runs(ids[row][:n_blocks[row]], length, bs)
        large = n_seq == 1 or 2 * n_blocks[row] * layout.block_bytes >= _IN_PLACE_BYTES
        if runs is None or not large or (len(runs) > 1 and (n > 1 or layout.device.type != "cpu")):
            gathered.append(row)
            continue
        pieces += _gathered_chunks(gathered, n, block_table, seqlens_k, lengths, layout)
        gathered = []
        mask = None
        if n > 1:
            if template is None:
                template = _causal_mask(n, max(lengths), layout)
            mask = template[:, template.shape[-1] - length:]
        pieces.append(_InPlace(row, runs, mask))
    pieces += _gathered_chunks(gathered, n, block_table, seqlens_k, lengths, layout)
    return _Group(n, n_seq, tokens, pieces)


def _runs(ids: list[int], length: int, block_size: int):
    """Runs of consecutive block ids as (first block, blocks, keys); None when there are more than _MAX_RUNS."""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return [(ids[0], len(ids), length)]
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            runs.append((ids[start], i - start, min(i * block_size, length) - start * block_size))
            if len(runs) > _MAX_RUNS:
                return None
            start = i
    return runs


def _causal_mask(n, length, layout: _Layout):
    """Additive mask (n * group, length): folded query row i * group + g (token i) sees keys up to length - n + i."""
    query_pos = torch.arange(length - n, length, device=layout.device).repeat_interleave(layout.group)
    visible = torch.arange(length, device=layout.device)[None, :] <= query_pos[:, None]
    return _additive(visible, layout.dtype)


def _additive(visible, dtype):
    # additive rather than boolean: SDPA would otherwise convert a boolean mask on every call (every layer)
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


def _gathered_chunks(rows: list[int], n, block_table, seqlens_k, lengths, layout: _Layout) -> list[_Gathered]:
    """Consecutive rows of the list, in chunks whose gathered k/v take about _GATHER_BYTES."""
    chunks, bs, device = [], layout.block_size, layout.device
    spans = []  # maximal runs of consecutive row numbers
    for row in rows:
        if spans and spans[-1][1] == row:
            spans[-1][1] = row + 1
        else:
            spans.append([row, row + 1])
    for first, stop in spans:
        per_seq = 2 * layout.block_bytes * -(-max(lengths[first:stop]) // bs)
        step = max(1, _GATHER_BYTES // per_seq)
        for start in range(first, stop, step):
            rows_slice = slice(start, min(start + step, stop))
            n_blocks = -(-max(lengths[rows_slice]) // bs)
            key_pos = torch.arange(n_blocks * bs, device=device)
            seq_lens = seqlens_k[rows_slice]
            if n == 1:
                visible = (key_pos[None, :] < seq_lens[:, None])[:, None, None]  # (B, 1, 1, L)
            else:  # rows of the folded query: (token i, group member g) -> i * group + g
                query_pos = (seq_lens.long() - n)[:, None] + torch.arange(n, device=device)[None, :]
                visible = key_pos[None, None, :] <= query_pos[:, :, None]  # (B, n, L)
                visible = visible.repeat_interleave(layout.group, dim=1)[:, None]
            chunks.append(_Gathered(rows_slice, block_table[rows_slice, :n_blocks].reshape(-1), n_blocks,
                                    _additive(visible, layout.dtype)))
    return chunks


def _attend_group(q, k_cache, v_cache, group: _Group, scale):
    """q (B, n, Hq, D): n new tokens for each of B sequences -> (B * n, Hq, D)."""
    outs = [_attend_gathered(q[piece.rows], k_cache, v_cache, piece, scale) if isinstance(piece, _Gathered)
            else _attend_in_place(q[piece.row], k_cache, v_cache, piece, scale) for piece in group.pieces]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _fold(q, n_kv):
    """(B, n, Hq, D) -> (B, Hkv, n * group, D): folded query row i * group + g is token i, query head h * group + g."""
    n_seq, n, n_heads, dim = q.shape
    if n == 1:
        return q.reshape(n_seq, n_kv, n_heads // n_kv, dim)
    return q.view(n_seq, n, n_kv, n_heads // n_kv, dim).permute(0, 2, 1, 3, 4).reshape(n_seq, n_kv, -1, dim)


def _unfold(out, n):
    """(B, Hkv, n * group, D) -> (B * n, Hq, D)."""
    n_seq, n_kv, rows, dim = out.shape
    if n == 1:
        return out.reshape(n_seq, n_kv * rows, dim)
    return out.view(n_seq, n_kv, n, rows // n, dim).permute(0, 2, 1, 3, 4).reshape(n_seq * n, -1, dim)


def _attend_gathered(q, k_cache, v_cache, chunk: _Gathered, scale):
    n_seq, n = q.shape[:2]
    bs, n_kv, dim = k_cache.shape[1:]
    k, v = (cache.index_select(0, chunk.blocks).view(n_seq, chunk.n_blocks * bs, n_kv, dim).transpose(1, 2)
            for cache in (k_cache, v_cache))
    return _unfold(F.scaled_dot_product_attention(_fold(q, n_kv), k, v, attn_mask=chunk.mask, scale=scale), n)


def _attend_in_place(q, k_cache, v_cache, piece: _InPlace, scale):
    """q (n, Hq, D) of one sequence -> (n, Hq, D)."""
    n = q.shape[0]
    bs, n_kv, dim = k_cache.shape[1:]
    q = _fold(q[None], n_kv)

    def run_keys(first, blocks, keys):
        return (cache.narrow(0, first, blocks).view(1, blocks * bs, n_kv, dim)[:, :keys].transpose(1, 2)
                for cache in (k_cache, v_cache))

    if len(piece.runs) == 1:
        return _unfold(F.scaled_dot_product_attention(q, *run_keys(*piece.runs[0]), attn_mask=piece.mask,
                                                      scale=scale), n)
    # one decoding token over several runs: softmax over their union = runs weighted by exp(lse_run - lse_all)
    parts = [torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, *run_keys(*run), scale=scale)
             for run in piece.runs]
    lse = torch.stack([p[1] for p in parts])  # (runs, 1, Hkv, group), fp32
    weights = (lse - lse.logsumexp(0)).exp_()[..., None]
    out = (torch.stack([p[0] for p in parts]).float() * weights).sum(0)
    return _unfold(out.to(q.dtype), 1)
