"""New query tokens of several sequences against a paged KV cache in Triton (forward only; the sampler's fast path).

The cache holds pages of PAGE_SIZE token slots: k_cache/v_cache (num_pages, page_size, Hkv, D); block_table[b, j] is
the page holding tokens j * page_size ... of sequence b. Query i of sequence b (n_b new tokens) sits at position
seqlens_k[b] - n_b + i and sees keys 0..that position. One program serves one kv head of one sequence: its rows are
the (query token, query head) pairs of that kv head's group, so each K/V page is read once for the whole group. Long
caches are split across programs (flash-decoding) and the partial results merged by a second kernel. Nothing here
reads a device value on the host, so the launches suit CUDA graphs.
"""
import math

import torch
import triton
import triton.language as tl

from .flash_attention import LOG2E, check_attention_shapes, pad_head_dim, padded_head_dim
from .triton_utils import cast, check_launchable, dot, dot_precision, interpreting, multiprocessor_count, row_major

_MIN_ROWS = 16  # tl.dot needs at least 16 rows
# rows (query tokens x heads of a group) and keys per tile: fp32 products run on the CUDA cores and spill registers
# beyond 16x16 tiles at head_dim 128 (ptxas reports for sm_90); bf16 takes 64 of each without spilling
_TILES = {torch.bfloat16: (64, 64), torch.float32: (16, 16)}
_MIN_KEYS_PER_SPLIT = 256
_PROGRAMS_PER_SM = 2


@triton.jit
def _paged_fwd(Q, K_CACHE, V_CACHE, BLOCK_TABLE, CU_SEQLENS_Q, SEQLENS_K, O, PART_O, PART_LSE,
               qk_scale, n_kv_heads, keys_per_split, n_tokens, n_heads,
               stride_qt, stride_qh, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
               stride_bt, stride_ot, stride_oh,
               GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr,
               PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
               INTERPRET: tl.constexpr):
    q_block = tl.program_id(0)
    seq = tl.program_id(1) // n_kv_heads
    kv_head = tl.program_id(1) % n_kv_heads
    split = tl.program_id(2)
    q_first = tl.load(CU_SEQLENS_Q + seq)
    n_q = tl.load(CU_SEQLENS_Q + seq + 1) - q_first
    n_keys = tl.load(SEQLENS_K + seq)
    key_lo = split * keys_per_split
    if q_block * BLOCK_Q >= n_q or key_lo >= n_keys:
        return

    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    token = q_block * BLOCK_Q + rows // GROUP_PAD
    head = kv_head * GROUP + rows % GROUP_PAD
    row_ok = (token < n_q) & (rows % GROUP_PAD < GROUP)
    position = n_keys - n_q + token
    offs_d = tl.arange(0, HEAD_DIM)
    q_offsets = (q_first + token).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(Q + q_offsets[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    # keys this program reads: its split, cut at the cache end and at the last position its queries see
    last_visible = n_keys - n_q + tl.minimum(q_block * BLOCK_Q + BLOCK_Q, n_q) - 1
    key_hi = tl.minimum(tl.minimum(key_lo + keys_per_split, n_keys), last_visible + 1)
    m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q * GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    for start_n in range(key_lo, key_hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        key_ok = keys < key_hi
        page = tl.load(BLOCK_TABLE + seq * stride_bt + keys // PAGE_SIZE, mask=key_ok, other=0).to(tl.int64)
        slot = keys % PAGE_SIZE
        k = tl.load(K_CACHE + page[:, None] * stride_kp + slot[:, None] * stride_ks + kv_head * stride_kh
                    + offs_d[None, :], mask=key_ok[:, None], other=0.0)
        s = dot(q, tl.trans(k), tl.zeros([BLOCK_Q * GROUP_PAD, BLOCK_N], dtype=tl.float32), PRECISION, INTERPRET)
        s = tl.where(key_ok[None, :] & (keys[None, :] <= position[:, None]), s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # a row may see no key of this split yet (later queries of an extend, padding rows): keep it at zero
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(V_CACHE + page[:, None] * stride_vp + slot[:, None] * stride_vs + kv_head * stride_vh
                    + offs_d[None, :], mask=key_ok[:, None], other=0.0)
        acc = dot(cast(p, v.dtype, INTERPRET), v, acc * alpha[:, None], PRECISION, INTERPRET)
        m_i = m_new

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    if SPLIT:
        # partials laid out (split, token, head[, dim]) in fp32
        part_row = (split * n_tokens + q_first + token).to(tl.int64) * n_heads + head
        tl.store(PART_O + part_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(PART_LSE + part_row, lse, mask=row_ok)
    else:
        o_offsets = (q_first + token).to(tl.int64) * stride_ot + head * stride_oh
        tl.store(O + o_offsets[:, None] + offs_d[None, :], cast(out, O.dtype.element_ty, INTERPRET),
                 mask=row_ok[:, None])


@triton.jit
def _merge_splits(PART_O, PART_LSE, CU_SEQLENS_Q, SEQLENS_K, O, keys_per_split, n_tokens, n_heads,
                  stride_ot, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, INTERPRET: tl.constexpr):
    """out = sum_s exp2(lse_s) * out_s / sum_s exp2(lse_s) over the splits that hold keys of the sequence."""
    token_in_seq = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_first = tl.load(CU_SEQLENS_Q + seq)
    if token_in_seq >= tl.load(CU_SEQLENS_Q + seq + 1) - q_first:
        return
    token = q_first + token_in_seq
    n_splits = tl.cdiv(tl.load(SEQLENS_K + seq), keys_per_split)
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([1], float("-inf"), dtype=tl.float32)
    total = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for first_split in range(0, n_splits, BLOCK_S):
        splits = first_split + tl.arange(0, BLOCK_S)
        part_row = (splits * n_tokens + token).to(tl.int64) * n_heads + head
        lse = tl.load(PART_LSE + part_row, mask=splits < n_splits, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(lse, axis=0))  # finite: split 0 always holds key 0, which every query sees
        weight = tl.math.exp2(lse - m_new)
        scale = tl.math.exp2(m - m_new)
        part = tl.load(PART_O + part_row[:, None] * HEAD_DIM + offs_d[None, :], mask=(splits < n_splits)[:, None],
                       other=0.0)
        acc = acc * scale + tl.sum(weight[:, None] * part, axis=0)
        total = total * scale + tl.sum(weight, axis=0)
        m = m_new
    out = acc / total
    tl.store(O + token.to(tl.int64) * stride_ot + head * stride_oh + offs_d, cast(out, O.dtype.element_ty, INTERPRET))


def _tiles(group: int, max_seqlen_q: int, max_rows: int):
    group_pad = triton.next_power_of_2(group)
    block_q = min(triton.next_power_of_2(max_seqlen_q), max(1, max_rows // group_pad))
    block_q = max(block_q, _MIN_ROWS // group_pad, 1)
    return group_pad, block_q


def _keys_per_split(capacity: int, programs_without_split: int, device: torch.device, block_n: int) -> int:
    """Split the cache so that a full cache gives about _PROGRAMS_PER_SM programs per multiprocessor."""
    wanted_splits = max(1, _PROGRAMS_PER_SM * multiprocessor_count(device) // max(1, programs_without_split))
    per_split = max(_MIN_KEYS_PER_SPLIT, triton.cdiv(capacity, wanted_splits))
    return triton.cdiv(per_split, block_n) * block_n


def paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, scale=None,
                    keys_per_split=None):
    """Query tokens packed by sequence (Tq, Hq, D) against a paged cache -> (Tq, Hq, D); see the module docstring.

    keys_per_split overrides the split size: a multiple of the key tile (on a GPU 64 for bf16 and 16 for fp32; 16
    under the interpreter).
    """
    check_launchable("paged_attention", q, k_cache, v_cache)
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"kernels.paged_attention: expected k_cache/v_cache (num_pages, page_size, Hkv, D) of one "
                         f"shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    check_attention_shapes("paged_attention", q, k_cache[0], v_cache[0])
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    true_head_dim, head_dim = q.shape[-1], padded_head_dim(q.shape[-1])
    # an unusual head size pads (copies) the whole cache on every call: correct, meant for small test models only
    q = row_major(pad_head_dim(q, head_dim))
    k_cache, v_cache = (pad_head_dim(t, head_dim).contiguous() for t in (k_cache, v_cache))
    n_tokens, n_heads = q.shape[:2]
    page_size, n_kv_heads = k_cache.shape[1], k_cache.shape[2]
    n_seqs = block_table.shape[0]
    group = n_heads // n_kv_heads
    block_table, cu_seqlens_q, seqlens_k = (t.to(q.device, torch.int32).contiguous()
                                            for t in (block_table, cu_seqlens_q, seqlens_k))

    max_rows, block_n = (16, 16) if interpreting() else _TILES[q.dtype]
    group_pad, block_q = _tiles(group, max_seqlen_q, max_rows)
    q_blocks = triton.cdiv(max_seqlen_q, block_q)
    capacity = block_table.shape[1] * page_size
    if keys_per_split is None:
        keys_per_split = _keys_per_split(capacity, q_blocks * n_seqs * n_kv_heads, q.device, block_n)
    elif keys_per_split % block_n:
        raise ValueError(f"kernels.paged_attention: keys_per_split={keys_per_split} is not a multiple of {block_n}")
    n_splits = triton.cdiv(capacity, keys_per_split)

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    split = n_splits > 1
    if split:
        part_o = torch.empty(n_splits, n_tokens, n_heads, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(n_splits, n_tokens, n_heads, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out  # unused
    interpret = interpreting()
    _paged_fwd[(q_blocks, n_seqs * n_kv_heads, n_splits)](
        q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, out, part_o, part_lse,
        sm_scale * LOG2E, n_kv_heads, keys_per_split, n_tokens, n_heads,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3], block_table.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, HEAD_DIM=head_dim, PAGE_SIZE=page_size, BLOCK_N=block_n,
        SPLIT=split, PRECISION=dot_precision(q.dtype), INTERPRET=interpret, num_warps=4, num_stages=2)
    if split:
        _merge_splits[(max_seqlen_q, n_seqs, n_heads)](
            part_o, part_lse, cu_seqlens_q, seqlens_k, out, keys_per_split, n_tokens, n_heads,
            out.stride(0), out.stride(1), HEAD_DIM=head_dim, BLOCK_S=16, INTERPRET=interpret, num_warps=4)
    return out[..., :true_head_dim]
