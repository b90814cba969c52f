"""Causal attention over packed variable-length documents in Triton (FlashAttention-2 style), forward and backward.

q (T, Hq, D), k/v (T, Hkv, D) hold documents back to back; cu_seqlens (n_docs + 1,) int32 marks where each starts.
No token attends across documents. GQA maps query head h to kv head h // (Hq // Hkv) inside the kernels, so repeated
K/V are never built; the dK/dV pass walks all query heads of a group, so their contributions sum without atomics.
Softmax statistics are fp32 and in base 2: the forward saves lse2 = log2(sum(exp2(s * scale * log2(e)))) per query
row, which the backward uses to rebuild probabilities. The backward runs two passes: dQ (which also computes
delta = rowsum(dO * O)) per query block, then dK/dV per key block. Head sizes up to 128 that are not a power of two
(at least 16) run zero-padded to one.
"""
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .triton_utils import cast, check_launchable, dot, dot_precision, interpreting, row_major

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128  # the tiles below are sized for it; other sizes up to it are zero-padded to a power of two


# ---------------------------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_block(acc, m_i, l_i, q, K_head, V_head, offs_m, offs_n, offs_d, start_n, doc_len, qk_scale,
               stride_kt, stride_vt, CAUSAL_EDGE: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """One key block of the online softmax; CAUSAL_EDGE blocks mask future keys and keys past the document end.

    Addresses are formed here from 1-D offsets rather than carried as tiles of 64-bit pointers: a carried [64, 128]
    pointer tile alone costs 64 registers per thread and made the loop spill.
    """
    cols = start_n + offs_n
    k_ptrs = K_head + cols[:, None] * stride_kt + offs_d[None, :]
    if CAUSAL_EDGE:
        key_ok = cols < doc_len
        k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
    s = dot(q, tl.trans(k), tl.zeros([q.shape[0], k.shape[0]], dtype=tl.float32), PRECISION, INTERPRET) * qk_scale
    if CAUSAL_EDGE:
        s = tl.where(key_ok[None, :] & (offs_m[:, None] >= cols[None, :]), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v_ptrs = V_head + cols[:, None] * stride_vt + offs_d[None, :]
    if CAUSAL_EDGE:
        v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = dot(cast(p, v.dtype, INTERPRET), v, acc * alpha[:, None], PRECISION, INTERPRET)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, CU_SEQLENS, qk_scale, n_tokens, seq_bucket,
              stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    # the longest (latest) query blocks are launched first: causal work grows with the block index
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    doc = tl.program_id(1)
    head = tl.program_id(2)
    doc_start = tl.load(CU_SEQLENS + doc)
    doc_len = tl.load(CU_SEQLENS + doc + 1) - doc_start
    if start_m >= doc_len:
        return
    kv_head = head // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < doc_len
    first = doc_start.to(tl.int64)

    q_ptrs = Q + first * stride_qt + head * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    K_head = K + first * stride_kt + kv_head * stride_kh
    V_head = V + first * stride_vt + kv_head * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, start_m, BLOCK_N):  # keys strictly before this query block: no mask
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K_head, V_head, offs_m, offs_n, offs_d, start_n, doc_len,
                                   qk_scale, stride_kt, stride_vt, False, PRECISION, INTERPRET)
    for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, doc_len), BLOCK_N):  # the diagonal
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K_head, V_head, offs_m, offs_n, offs_d, start_n, doc_len,
                                   qk_scale, stride_kt, stride_vt, True, PRECISION, INTERPRET)

    out = acc / l_i[:, None]
    o_ptrs = O + first * stride_ot + head * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, cast(out, O.dtype.element_ty, INTERPRET), mask=row_ok[:, None])
    tl.store(LSE + head * n_tokens + doc_start + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)


# ---------------------------------------------------------------------------------------------------------------------
# backward: dQ pass (computes delta first), then dK/dV pass


@triton.jit
def _bwd_dq_block(dq, q, do, lse, delta, K_head, V_head, offs_m, offs_n, offs_d, start_n, doc_len, qk_scale,
                  stride_kt, stride_vt, CAUSAL_EDGE: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    cols = start_n + offs_n
    k_ptrs = K_head + cols[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = V_head + cols[:, None] * stride_vt + offs_d[None, :]
    if CAUSAL_EDGE:
        key_ok = cols < doc_len
        k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    zeros = tl.zeros([q.shape[0], k.shape[0]], dtype=tl.float32)
    s = dot(q, tl.trans(k), zeros, PRECISION, INTERPRET)
    p = tl.math.exp2(s * qk_scale - lse[:, None])
    if CAUSAL_EDGE:
        p = tl.where(key_ok[None, :] & (offs_m[:, None] >= cols[None, :]), p, 0.0)
    dp = dot(do, tl.trans(v), zeros, PRECISION, INTERPRET)
    ds = p * (dp - delta[:, None])
    return dot(cast(ds, k.dtype, INTERPRET), k, dq, PRECISION, INTERPRET)


@triton.jit
def _attn_bwd_dq(Q, K, V, O, DO, LSE, DELTA, DQ, CU_SEQLENS, qk_scale, sm_scale, n_tokens, seq_bucket,
                 stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                 stride_dot, stride_doh, stride_dqt, stride_dqh,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    doc = tl.program_id(1)
    head = tl.program_id(2)
    doc_start = tl.load(CU_SEQLENS + doc)
    doc_len = tl.load(CU_SEQLENS + doc + 1) - doc_start
    if start_m >= doc_len:
        return
    kv_head = head // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < doc_len
    first = doc_start.to(tl.int64)
    rows = offs_m[:, None]

    q = tl.load(Q + first * stride_qt + head * stride_qh + rows * stride_qt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + first * stride_dot + head * stride_doh + rows * stride_dot + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    o = tl.load(O + first * stride_ot + head * stride_oh + rows * stride_ot + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + head * n_tokens + doc_start + offs_m, delta, mask=row_ok)
    lse = tl.load(LSE + head * n_tokens + doc_start + offs_m, mask=row_ok, other=0.0)

    K_head = K + first * stride_kt + kv_head * stride_kh
    V_head = V + first * stride_vt + kv_head * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, start_m, BLOCK_N):
        dq = _bwd_dq_block(dq, q, do, lse, delta, K_head, V_head, offs_m, offs_n, offs_d, start_n, doc_len,
                           qk_scale, stride_kt, stride_vt, False, PRECISION, INTERPRET)
    for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, doc_len), BLOCK_N):
        dq = _bwd_dq_block(dq, q, do, lse, delta, K_head, V_head, offs_m, offs_n, offs_d, start_n, doc_len,
                           qk_scale, stride_kt, stride_vt, True, PRECISION, INTERPRET)
    tl.store(DQ + first * stride_dqt + head * stride_dqh + rows * stride_dqt + offs_d[None, :],
             cast(dq * sm_scale, DQ.dtype.element_ty, INTERPRET), mask=row_ok[:, None])


@triton.jit
def _bwd_dkdv_block(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, offs_m, offs_n, offs_d, start_m, doc_len,
                    qk_scale, stride_qt, stride_dot, CAUSAL_EDGE: tl.constexpr, PRECISION: tl.constexpr,
                    INTERPRET: tl.constexpr):
    """One query block against this program's key block, in transposed form (rows are keys)."""
    rows = start_m + offs_m
    row_ok = rows < doc_len
    q = tl.load(Q_head + rows[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO_head + rows[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    # rows past the document get lse = +inf, hence probability 0
    lse = tl.load(LSE_head + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA_head + rows, mask=row_ok, other=0.0)
    zeros = tl.zeros([k.shape[0], q.shape[0]], dtype=tl.float32)
    s_t = dot(k, tl.trans(q), zeros, PRECISION, INTERPRET)
    p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
    if CAUSAL_EDGE:
        p_t = tl.where(rows[None, :] >= offs_n[:, None], p_t, 0.0)
    dv = dot(cast(p_t, do.dtype, INTERPRET), do, dv, PRECISION, INTERPRET)
    dp_t = dot(v, tl.trans(do), zeros, PRECISION, INTERPRET)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = dot(cast(ds_t, q.dtype, INTERPRET), q, dk, PRECISION, INTERPRET)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, CU_SEQLENS, qk_scale, sm_scale, n_tokens, seq_bucket,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                   stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N  # the earliest key blocks (most queries to visit) are launched first
    doc = tl.program_id(1)
    kv_head = tl.program_id(2)
    doc_start = tl.load(CU_SEQLENS + doc)
    doc_len = tl.load(CU_SEQLENS + doc + 1) - doc_start
    if start_n >= doc_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < doc_len
    first = doc_start.to(tl.int64)

    k = tl.load(K + first * stride_kt + kv_head * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + first * stride_vt + kv_head * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    diagonal_end = tl.minimum(start_n + BLOCK_N, doc_len)
    for g in range(GROUP):
        head = kv_head * GROUP + g
        Q_head = Q + first * stride_qt + head * stride_qh
        DO_head = DO + first * stride_dot + head * stride_doh
        LSE_head = LSE + head * n_tokens + doc_start
        DELTA_head = DELTA + head * n_tokens + doc_start
        for start_m in range(start_n, diagonal_end, BLOCK_M):  # query blocks that cross the diagonal
            dk, dv = _bwd_dkdv_block(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, offs_m, offs_n, offs_d,
                                     start_m, doc_len, qk_scale, stride_qt, stride_dot, True, PRECISION, INTERPRET)
        for start_m in range(start_n + BLOCK_N, doc_len, BLOCK_M):  # query blocks that see every key here
            dk, dv = _bwd_dkdv_block(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, offs_m, offs_n, offs_d,
                                     start_m, doc_len, qk_scale, stride_qt, stride_dot, False, PRECISION, INTERPRET)
    tl.store(DK + first * stride_dkt + kv_head * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
             cast(dk * sm_scale, DK.dtype.element_ty, INTERPRET), mask=key_ok[:, None])
    tl.store(DV + first * stride_dvt + kv_head * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
             cast(dv, DV.dtype.element_ty, INTERPRET), mask=key_ok[:, None])


# ---------------------------------------------------------------------------------------------------------------------
# launch configurations: fixed small tiles under the interpreter, a short autotuned list on a GPU


def _config(block_m, block_n, num_warps, num_stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


# (BLOCK_M, BLOCK_N, warps, stages); the forward and dQ need BLOCK_M % BLOCK_N == 0, dK/dV BLOCK_N % BLOCK_M == 0.
# Chosen from ptxas resource reports for sm_90 at head_dim 128: the bf16 tiles below spill nothing (dK/dV: a few
# dozen bytes), while fp32 operands (true fp32 products on the CUDA cores) spill heavily above 16x16 tiles.
_FWD_CONFIGS = [_config(128, 64, 8, 3), _config(128, 128, 8, 2), _config(64, 64, 4, 3)]
_DQ_CONFIGS = [_config(128, 64, 8, 2), _config(64, 64, 4, 3), _config(64, 32, 4, 2)]
_DKDV_CONFIGS = [_config(32, 128, 8, 3), _config(64, 128, 8, 2), _config(32, 64, 4, 2)]
_FP32_CONFIGS = [_config(16, 16, 4, 2)]
_INTERPRETER_TILES = {"fwd": (32, 16), "dq": (32, 16), "dkdv": (16, 32)}
_AUTOTUNE_KEY = ["seq_bucket", "HEAD_DIM", "GROUP"]


def _tuned(kernel, configs):
    def by_dtype(all_configs, named_args, **kwargs):
        return _FP32_CONFIGS if named_args["Q"].dtype == torch.float32 else configs

    prune = {"early_config_prune": by_dtype}
    return triton.autotune(configs + _FP32_CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=prune)(kernel)


_attn_fwd_tuned = _tuned(_attn_fwd, _FWD_CONFIGS)
_attn_bwd_dq_tuned = _tuned(_attn_bwd_dq, _DQ_CONFIGS)
_attn_bwd_dkdv_tuned = _tuned(_attn_bwd_dkdv, _DKDV_CONFIGS)


def _launch(kernel, tuned_kernel, tiles, rows_axis_tile, max_seqlen, grid_rest, *args, **constexprs):
    """Launch fixed tiles when interpreting, the autotuned kernel otherwise; grid = (row blocks, *grid_rest)."""
    if interpreting():
        block_m, block_n = _INTERPRETER_TILES[tiles]
        tile = block_m if rows_axis_tile == "BLOCK_M" else block_n
        kernel[(triton.cdiv(max_seqlen, tile), *grid_rest)](*args, BLOCK_M=block_m, BLOCK_N=block_n, INTERPRET=True,
                                                           **constexprs)
    else:
        grid = lambda meta: (triton.cdiv(max_seqlen, meta[rows_axis_tile]), *grid_rest)  # noqa: E731
        tuned_kernel[grid](*args, INTERPRET=False, **constexprs)


# ---------------------------------------------------------------------------------------------------------------------
# autograd wrapper


def _strides(t):
    return t.stride(0), t.stride(1)


class _VarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, sm_scale):
        n_tokens, n_heads, head_dim = q.shape
        group = n_heads // k.shape[1]
        n_docs = cu_seqlens.shape[0] - 1
        qk_scale = sm_scale * LOG2E
        seq_bucket = triton.next_power_of_2(max_seqlen)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(n_heads, n_tokens, dtype=torch.float32, device=q.device)
        _launch(_attn_fwd, _attn_fwd_tuned, "fwd", "BLOCK_M", max_seqlen, (n_docs, n_heads),
                q, k, v, out, lse, cu_seqlens, qk_scale, n_tokens, seq_bucket,
                *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                GROUP=group, HEAD_DIM=head_dim, PRECISION=dot_precision(q.dtype))
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.max_seqlen, ctx.sm_scale = max_seqlen, sm_scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        dout = row_major(dout)
        n_tokens, n_heads, head_dim = q.shape
        n_kv_heads = k.shape[1]
        group = n_heads // n_kv_heads
        n_docs = cu_seqlens.shape[0] - 1
        sm_scale, max_seqlen = ctx.sm_scale, ctx.max_seqlen
        qk_scale = sm_scale * LOG2E
        seq_bucket = triton.next_power_of_2(max_seqlen)
        precision = dot_precision(q.dtype)
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        delta = torch.empty_like(lse)
        _launch(_attn_bwd_dq, _attn_bwd_dq_tuned, "dq", "BLOCK_M", max_seqlen, (n_docs, n_heads),
                q, k, v, out, dout, lse, delta, dq, cu_seqlens, qk_scale, sm_scale, n_tokens, seq_bucket,
                *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(dout), *_strides(dq),
                GROUP=group, HEAD_DIM=head_dim, PRECISION=precision)
        _launch(_attn_bwd_dkdv, _attn_bwd_dkdv_tuned, "dkdv", "BLOCK_N", max_seqlen, (n_docs, n_kv_heads),
                q, k, v, dout, lse, delta, dk, dv, cu_seqlens, qk_scale, sm_scale, n_tokens, seq_bucket,
                *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
                GROUP=group, HEAD_DIM=head_dim, PRECISION=precision)
        return dq, dk, dv, None, None, None


def check_attention_shapes(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"kernels.{op}: expected q (T, Hq, D) and k/v of one shape (.., Hkv, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"kernels.{op}: head_dim {q.shape[-1]} (k: {k.shape[-1]}): expected equal sizes of at most "
                         f"{MAX_HEAD_DIM}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"kernels.{op}: {q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"kernels.{op}: q/k/v dtypes {q.dtype}, {k.dtype}, {v.dtype}: expected all bf16 or all fp32")


def padded_head_dim(head_dim: int) -> int:
    """The power of two (at least 16, as tl.dot needs) that the kernels run a head of this size at."""
    return max(16, triton.next_power_of_2(head_dim))


def pad_head_dim(t: torch.Tensor, size: int) -> torch.Tensor:
    """Zero columns change no dot product and give zero output columns, which the caller slices off."""
    return t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1]))


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """Causal attention over packed documents: q (T, Hq, D), k/v (T, Hkv, D), cu_seqlens int32 -> (T, Hq, D)."""
    check_launchable("attention", q, k, v)
    check_attention_shapes("attention", q, k, v)
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"kernels.attention: q has {q.shape[0]} tokens but k/v have {k.shape[0]}")
    head_dim = q.shape[-1]
    sm_scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    q, k, v = (row_major(pad_head_dim(t, padded_head_dim(head_dim))) for t in (q, k, v))
    out = _VarlenAttention.apply(q, k, v, cu_seqlens, int(max_seqlen), sm_scale)
    return out[..., :head_dim]
