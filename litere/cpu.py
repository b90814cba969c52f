"""Host-specific tuning for CPU runs, in one place, applied from outside the model.

What each setting buys was measured on 2-core cloud CPUs; BENCHMARKS.md has the figures.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path


def has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively; without AVX512-BF16 or AMX, bf16 matmuls are slower than fp32."""
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
