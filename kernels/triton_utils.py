"""Helpers shared by the Triton kernels: interpreter detection, launch checks and interpreter-safe casts and dots.

Under `TRITON_INTERPRET=1` (CPU tests) two things differ from a GPU: bf16 `tl.dot` is computed on the raw bits, so
operands are upcast to fp32 first, and fp32 -> bf16 casts truncate, so `cast` rounds to nearest-even by hand before
casting. On a GPU both are compile-time no-ops.
"""
import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_launchable(op: str, *tensors: torch.Tensor) -> None:
    """Fail with a clear message where Triton cannot run these tensors."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"kernels.{op}: all tensors must be on one device, got {device} and {t.device}")
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"kernels.{op}: the Triton path needs a CUDA tensor, or TRITON_INTERPRET=1 set before `kernels` is "
            f"imported (got a {device.type} tensor); use LITERE_KERNELS=torch for the PyTorch reference"
        )


def row_major(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself when its last dimension is contiguous (kernels take the other strides), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def multiprocessor_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a small number still exercises multi-program reductions and splits


@triton.jit
def cast(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """x.to(DTYPE) with round-to-nearest-even also under the interpreter."""
    if INTERPRET:
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + a @ b with fp32 accumulation; PRECISION is "ieee" for fp32 operands (no tf32), "tf32" otherwise."""
    if INTERPRET:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"
