"""Triton varlen flash attention and paged decode attention vs the PyTorch references.

Accuracy is judged the way the design asks: the kernel's relative error against a high-precision reference (float64
for fp32 inputs, fp32 for bf16) may be at most 2x (forward) / 3x (backward) the error of PyTorch's own attention at the
kernel's precision. CPU runs go through the Triton interpreter with tiny shapes.
"""
import pytest
import torch

pytest.importorskip("triton")

import kernels  # noqa: E402
from kernels import reference  # noqa: E402
from kernels.decode_attention import paged_attention  # noqa: E402
from kernels.flash_attention import varlen_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _cu_seqlens(lengths, device=DEVICE):
    return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(device, torch.int32)


def _qkv(n_tokens, n_heads, n_kv_heads, head_dim, dtype, seed, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n_tokens, h, head_dim, generator=gen).to(device, dtype)
                 for h in (n_heads, n_kv_heads, n_kv_heads))


def _forward_backward(fn, q, k, v, cu_seqlens, max_seqlen, grad):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, cu_seqlens, max_seqlen)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def _relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _check_against_reference(lengths, n_heads, n_kv_heads, head_dim, dtype, seed=0):
    q, k, v = _qkv(sum(lengths), n_heads, n_kv_heads, head_dim, dtype, seed)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE, dtype)
    cu, max_len = _cu_seqlens(lengths), max(lengths)
    precise = torch.float64 if dtype == torch.float32 else torch.float32
    exact = _forward_backward(reference.attention, *(t.to(precise) for t in (q, k, v)), cu, max_len, grad.to(precise))
    ours = _forward_backward(varlen_attention, q, k, v, cu, max_len, grad)
    torchs = _forward_backward(reference.attention, q, k, v, cu, max_len, grad)
    floor = torch.finfo(dtype).eps / 4  # PyTorch can be lucky on tiny inputs; do not ask for better than rounding
    for name, factor, a, b, want in zip(("out", "dq", "dk", "dv"), (2, 3, 3, 3), ours, torchs, exact):
        assert a.dtype == dtype and a.shape == want.shape, name
        assert torch.isfinite(a).all(), name
        err, torch_err = _relative_error(a, want), _relative_error(b, want)
        assert err <= factor * max(torch_err, floor), f"{name}: error {err:.3e} vs PyTorch's {torch_err:.3e}"


@pytest.mark.parametrize(
    "lengths, n_heads, n_kv_heads, head_dim, dtype",
    [
        ([64], 2, 2, 64, torch.float32),                # one document, MHA
        ([37, 5, 22], 4, 1, 128, torch.float32),        # varlen, GQA 4:1, partial tiles
        ([32, 32], 4, 4, 128, torch.bfloat16),          # equal lengths, MHA
        ([37, 5, 22], 4, 1, 64, torch.bfloat16),        # varlen, GQA 4:1
        ([1, 48, 15], 4, 2, 128, torch.bfloat16),       # a one-token document, GQA 2:1
        ([20, 12], 2, 1, 16, torch.float32),            # the small head_dim of the test models
        ([20, 12], 4, 2, 24, torch.float32),            # not a power of two: zero-padded to 32
    ],
    ids=["fp32-mha", "fp32-gqa4-varlen", "bf16-mha-2docs", "bf16-gqa4-varlen", "bf16-gqa2-short-doc", "fp32-d16",
         "fp32-d24"],
)
def test_matches_reference(lengths, n_heads, n_kv_heads, head_dim, dtype):
    _check_against_reference(lengths, n_heads, n_kv_heads, head_dim, dtype)


def test_documents_do_not_see_each_other():
    """Rewriting the middle document leaves the others' outputs and gradients bit-for-bit unchanged."""
    lengths = [21, 30, 13]
    q, k, v = _qkv(sum(lengths), 4, 2, 64, torch.float32, seed=3)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    cu = _cu_seqlens(lengths)
    before = _forward_backward(varlen_attention, q, k, v, cu, max(lengths), grad)
    middle = slice(21, 51)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t, new in zip((q2, k2, v2), _qkv(sum(lengths), 4, 2, 64, torch.float32, seed=5)):
        t[middle] = new[middle]
    after = _forward_backward(varlen_attention, q2, k2, v2, cu, max(lengths), grad)
    others = torch.ones(sum(lengths), dtype=torch.bool)
    others[middle] = False
    for a, b in zip(before, after):
        assert torch.equal(a[others], b[others])
        assert not torch.equal(a[middle], b[middle])


def test_causal_future_tokens_do_not_matter():
    """Changing the last token's q/k/v changes no earlier output."""
    q, k, v = _qkv(40, 2, 1, 64, torch.float32, seed=6)
    cu = _cu_seqlens([40])
    out = varlen_attention(q, k, v, cu, 40)
    for t in (q, k, v):
        t[-1] += 1.0
    changed = varlen_attention(q, k, v, cu, 40)
    assert torch.equal(out[:-1], changed[:-1]) and not torch.equal(out[-1], changed[-1])


def test_dispatcher_routes_to_triton(monkeypatch):
    q, k, v = _qkv(24, 2, 1, 64, torch.float32, seed=7)
    cu = _cu_seqlens([10, 14])
    monkeypatch.setenv("LITERE_KERNELS", "triton")
    assert torch.equal(kernels.attention(q, k, v, cu, 14), varlen_attention(q, k, v, cu, 14))
    assert callable(kernels.attention) and callable(kernels.paged_attention)  # not shadowed by kernel modules


def test_rejects_unsupported_head_dim():
    q, k, v = _qkv(8, 2, 1, 256, torch.float32, seed=8)
    with pytest.raises(ValueError, match="head_dim 256"):
        varlen_attention(q, k, v, _cu_seqlens([8]), 8)


# ---------------------------------------------------------------------------------------------------------------------
# paged KV cache


def _paged_cache(k_full, v_full, lengths, page_size, seed, extra_pages=3):
    """Scatter each sequence's k/v (packed by sequence) into randomly chosen pages of a fresh cache."""
    n_kv_heads, head_dim = k_full.shape[1:]
    pages_per_seq = max(-(-n // page_size) for n in lengths) + 1
    n_pages = len(lengths) * pages_per_seq + extra_pages
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(n_pages, page_size, n_kv_heads, head_dim, generator=gen).to(k_full)  # junk in free slots
    v_cache = torch.randn(n_pages, page_size, n_kv_heads, head_dim, generator=gen).to(v_full)
    block_table = torch.randperm(n_pages, generator=gen)[: len(lengths) * pages_per_seq].view(len(lengths), -1)
    block_table = block_table.to(k_full.device)
    lengths_t = torch.tensor(lengths, device=k_full.device)
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=k_full.device), lengths_t)
    position = torch.arange(seq.shape[0], device=k_full.device) - (lengths_t.cumsum(0) - lengths_t)[seq]
    page, slot = block_table[seq, position // page_size], position % page_size
    k_cache[page, slot], v_cache[page, slot] = k_full, v_full
    return k_cache, v_cache, block_table.to(k_full.device, torch.int32)


@pytest.mark.parametrize(
    "new_tokens, cached, n_heads, n_kv_heads, head_dim, page_size, dtype, keys_per_split",
    [
        ([1, 1, 1], [5, 40, 17], 4, 1, 64, 16, torch.float32, None),     # decode, one split
        ([1, 1, 1], [5, 40, 17], 4, 1, 64, 16, torch.float32, 16),       # decode, several splits
        ([3, 1, 5], [5, 40, 17], 4, 2, 128, 8, torch.float32, 32),       # extend, pages smaller than key tiles
        ([3, 1, 5], [5, 40, 17], 2, 2, 128, 32, torch.bfloat16, 16),     # extend, MHA, bf16
        ([1, 1], [70, 33], 8, 2, 128, 16, torch.bfloat16, None),         # decode, GQA 4:1, bf16
        ([2, 1], [9, 30], 4, 2, 24, 4, torch.float32, 16),               # head_dim 24 (padded), pages of 4
    ],
    ids=["decode", "decode-split", "extend-split", "extend-bf16", "decode-gqa4-bf16", "extend-d24"],
)
def test_paged_matches_reference(new_tokens, cached, n_heads, n_kv_heads, head_dim, page_size, dtype,
                                 keys_per_split):
    _, k, v = _qkv(sum(cached), n_heads, n_kv_heads, head_dim, dtype, seed=9)
    q = _qkv(sum(new_tokens), n_heads, n_kv_heads, head_dim, dtype, seed=10)[0]
    k_cache, v_cache, table = _paged_cache(k, v, cached, page_size, seed=11)
    cu_q, seqlens_k = _cu_seqlens(new_tokens), torch.tensor(cached, dtype=torch.int32, device=DEVICE)
    args = (table, cu_q, seqlens_k, max(new_tokens))
    got = paged_attention(q, k_cache, v_cache, *args, keys_per_split=keys_per_split)
    precise = torch.float64 if dtype == torch.float32 else torch.float32
    want = reference.paged_attention(q.to(precise), k_cache.to(precise), v_cache.to(precise), *args)
    torch_err = _relative_error(reference.paged_attention(q, k_cache, v_cache, *args), want)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert _relative_error(got, want) <= 2 * max(torch_err, torch.finfo(dtype).eps / 4)


@pytest.mark.parametrize("keys_per_split", [None, 16])
def test_paged_decode_and_extend_equal_full_forward(keys_per_split):
    """The last tokens of each sequence, read back through the cache, match the full causal forward."""
    lengths, new_tokens = [29, 64, 7], [1, 4, 2]
    q, k, v = _qkv(sum(lengths), 4, 1, 64, torch.float32, seed=12)
    full = varlen_attention(q, k, v, _cu_seqlens(lengths), max(lengths))
    k_cache, v_cache, table = _paged_cache(k, v, lengths, page_size=16, seed=13)
    ends = _cu_seqlens(lengths)[1:].tolist()
    last = torch.cat([torch.arange(end - n, end) for end, n in zip(ends, new_tokens)]).to(DEVICE)
    out = paged_attention(q[last], k_cache, v_cache, table, _cu_seqlens(new_tokens),
                          torch.tensor(lengths, dtype=torch.int32, device=DEVICE), max(new_tokens),
                          keys_per_split=keys_per_split)
    torch.testing.assert_close(out, full[last], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# real Triton on a GPU, bf16, the 4B model's attention shape (32 query heads, 8 kv heads, head_dim 128)


@pytest.mark.gpu
@pytest.mark.parametrize("lengths", [[1024], [700, 1, 2048, 333], [4096]], ids=["1k", "varlen", "4k"])
def test_gpu_bf16_4b_shape(lengths):
    _check_against_reference(lengths, 32, 8, 128, torch.bfloat16, seed=20)


@pytest.mark.gpu
def test_gpu_head_dim_64_and_fp32():
    _check_against_reference([300, 129], 8, 2, 64, torch.bfloat16, seed=21)
    _check_against_reference([300, 129], 4, 1, 128, torch.float32, seed=22)


@pytest.mark.gpu
@pytest.mark.parametrize("new_tokens", [[1] * 8, [1, 7, 1, 64]], ids=["decode", "extend"])
def test_gpu_paged_bf16_4b_shape(new_tokens):
    cached = [3000, 17, 900, 4096, 1, 64, 2500, 128][: len(new_tokens)]
    cached = [max(c, n) for c, n in zip(cached, new_tokens)]
    _, k, v = _qkv(sum(cached), 32, 8, 128, torch.bfloat16, seed=23)
    q = _qkv(sum(new_tokens), 32, 8, 128, torch.bfloat16, seed=24)[0]
    k_cache, v_cache, table = _paged_cache(k, v, cached, page_size=16, seed=25)
    args = (table, _cu_seqlens(new_tokens), torch.tensor(cached, dtype=torch.int32, device=DEVICE), max(new_tokens))
    got = paged_attention(q, k_cache, v_cache, *args)
    want = reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), *args)
    torch_err = _relative_error(reference.paged_attention(q, k_cache, v_cache, *args), want)
    assert _relative_error(got, want) <= 2 * max(torch_err, torch.finfo(torch.bfloat16).eps / 4)
