"""Host-specific tuning for CPU runs, in one place: bf16 detection, the allocator, small-row matmuls, argmax.

Each piece is a plain function; `linear` and `argmax` take the portable path off CPU (or where their tuning does not
pay), so the code that calls them states no host special case:
- `has_bf16`: the trainer's choice of precision on CPU.
- `retain_freed_memory`: the sampler calls it when it is built on CPU.
- `linear`: model.py takes its matrix products from here (`from .cpu import linear`). The layout it picks is a pure
  function of the operands' shapes, dtype and device (and of whether torch.compile is tracing), so the trainer, the
  eager sampler and the compiled decode step round the same product the same way, as before it moved here. A hook
  or strategy that the sampler sets on the model would make the model's arithmetic depend on who configured it (the
  trainer's forward could round differently from the sampler's) and would add mutable state to choose among one
  implementation; an import keeps one code path and leaves model.py free of the host's reasons.
- `argmax`: sampling.py's greedy path.
- `separate_compile_cache`: the compiled decode step calls it before compiling on CPU.

What each setting buys was measured on 2-core cloud CPUs (the sampler section of BENCHMARKS.md has the figures);
gains differ between CPUs, so re-measure before widening a threshold.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def separate_compile_cache() -> None:
    """Give torch.compile's on-disk cache a folder of its own when torch runs at a CPU capability it was told to
    (ATEN_CPU_CAPABILITY, e.g. avx2 to stand in for an AVX2-only machine), unless TORCHINDUCTOR_CACHE_DIR names a
    folder other than torch's default (torch writes the default into the variable once it has used it).

    Inductor's cache keys leave that setting out: the demo model's decode step compiled by a process at avx2 and
    loaded by one at the CPU's own capability corrupted the heap within its first steps ("free(): invalid pointer";
    BENCHMARKS.md, "A bad entry in torch's compile cache")."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if capability and (chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir())):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{capability}"


def has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively; without AVX512-BF16 or AMX, bf16 matmuls are slower than fp32.

    Both the CPU and torch must use those instructions: ATEN_CPU_CAPABILITY=avx2 (which also stands in for an
    AVX2-only machine) leaves torch without them, and such a machine trains in fp32."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def retain_freed_memory():
    """Serve all allocations from a heap that is never trimmed (glibc mallopt; process-wide, no-op elsewhere).

    torch's CPU allocator calls malloc for every tensor; glibc maps large blocks fresh from the OS and unmaps them on
    free, so each step's big temporaries (KV gathers, vocabulary-wide logits) page-fault anew. The cost: freed
    memory stays with the process.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-4, 0)  # M_MMAP_MAX: never mmap
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never return the heap's top to the OS
    except (OSError, AttributeError, TypeError):
        pass


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear for a (rows, in) input, without bias.

    With 16-32 fp32 rows on CPU (decode batches) it computes (weight @ x.T).T instead, a layout that MKL's sgemm ran
    faster for so few rows on the Xeon it was tuned on; outside that range it was slower or not reliably faster. The
    result may then be a transposed (non-contiguous) view. Under torch.compile the row range becomes a guard (one
    graph per range), and only weights of 1,024+ inputs take the transposed layout: for the small `tiny` preset the
    transposed activations slowed the fused kernels more than the matmuls gained, while the `qwen3-0.6b` shape
    gained. Other CPUs may rank the layouts differently: measure there before widening the range.
    """
    if (x.dtype == torch.float32 and x.device.type == "cpu"
            and (weight.shape[1] >= 1024 or not torch.compiler.is_compiling()) and 16 <= x.shape[0] <= 32):
        return torch.mm(weight, x.t()).t()
    return F.linear(x, weight)


_ARGMAX_BLOCK = 128


def argmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (first) argmax and maximum of (B, V) values.

    On CPU torch's argmax is a scalar loop, slow over a vocabulary of 100k+ entries; for large vocabularies the
    maximal 128-wide block is found first with a vectorised amax, then the argmax runs within that block only.
    """
    n_rows, width = x.shape
    if x.device.type != "cpu" or width < 32 * _ARGMAX_BLOCK or width % _ARGMAX_BLOCK:
        top, index = x.max(-1)
        return index, top
    blocks = x.view(n_rows, width // _ARGMAX_BLOCK, _ARGMAX_BLOCK)
    top, block = blocks.amax(-1).max(-1)  # the first block that holds the maximum
    within = blocks[torch.arange(n_rows, device=x.device), block].argmax(-1)
    return block * _ARGMAX_BLOCK + within, top
