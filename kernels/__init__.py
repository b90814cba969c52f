"""The one place where attention and normalisation implementations are chosen.

Triton kernels run on CUDA, the PyTorch reference everywhere else; `LITERE_KERNELS=triton|torch` forces one
(Triton on CPU needs `TRITON_INTERPRET=1`). Code traced by torch.compile always takes the reference, which the
compiler fuses into kernels of its own. Model code calls these functions, never a kernel directly.
Kernel modules are named apart from these functions (flash_attention, decode_attention): importing a submodule sets
an attribute of the package, and `kernels.attention` must stay this function.
"""
import os

import torch

from . import reference

_CHOICES = ("triton", "torch")


def backend(device: torch.device) -> str:
    if torch.compiler.is_compiling():  # torch.compile generates its own fused kernels from the reference code
        return "torch"
    forced = os.environ.get("LITERE_KERNELS", "").strip().lower()
    if forced:
        if forced not in _CHOICES:
            raise ValueError(f"LITERE_KERNELS={forced!r}: expected one of {', '.join(_CHOICES)}")
        return forced
    return "triton" if device.type == "cuda" else "torch"


def rms_norm(x, weight, eps):
    if backend(x.device) == "triton":
        from .rmsnorm import rms_norm as triton_rms_norm

        return triton_rms_norm(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def _as_autocast_runs_attention(q, k, v):
    """Autocast does not reach a custom kernel: under it, give attention the lower precision that autocast gives
    PyTorch's own (q and k leave their RMSNorm in fp32 while v leaves its projection in bf16)."""
    device = q.device.type
    if not torch.is_autocast_enabled(device):
        return q, k, v
    dtype = torch.get_autocast_dtype(device)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
    q, k, v = _as_autocast_runs_attention(q, k, v)
    if backend(q.device) == "triton":
        from .flash_attention import varlen_attention

        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale)
    return reference.attention(q, k, v, cu_seqlens, max_seqlen, scale)


def paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, scale=None):
    if backend(q.device) == "triton":
        from .decode_attention import paged_attention as triton_paged_attention

        return triton_paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, scale)
    return reference.paged_attention(q, k_cache, v_cache, block_table, cu_seqlens_q, seqlens_k, max_seqlen_q, scale)
