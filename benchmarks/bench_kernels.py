"""Kernel speed on one CUDA GPU: RMSNorm GB/s and attention TFLOP/s against PyTorch, in one table.

RMSNorm (bf16; forward, forward+backward) vs torch eager and torch.compile of the reference, against the card's
measured device-to-device copy bandwidth. Attention (bf16, causal, head_dim 128, 32 query / 8 kv heads, 16K tokens
per batch) vs SDPA's flash backend, seq 1K-16K. The paged decode kernel's KV read bandwidth. Bytes counted are the
fewest each op must move (inputs read once, outputs written once), the same for every implementation; attention
FLOPs are the causal half of 4 * S^2 * D per head, the backward 2.5x the forward (its time is forward+backward minus
forward). Each time is the median of triton.testing.do_bench. Prints a table, then one JSON line.

    python benchmarks/bench_kernels.py [--json results.json] [--seqs 1024,4096]
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --smoke   # tiny shapes on CPU: checks the script only
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL = {
    "copy_elements": 512 * 2**20,
    "rms_shapes": [("hidden 2560", (32768, 2560)), ("q/k-norm 32x128", (32768, 32, 128)), ("row 8192", (16384, 8192))],
    "attn_tokens": 16384, "attn_heads": (32, 8),
    "decode": [(64, 4096), (8, 16384), (1, 32768)], "decode_heads": (32, 8),
}
SMOKE = {
    "copy_elements": 2**20,
    "rms_shapes": [("hidden 2560", (4, 2560)), ("q/k-norm 4x128", (4, 4, 128))],
    "attn_tokens": 128, "attn_heads": (4, 1),
    "decode": [(2, 64)], "decode_heads": (4, 1),
}
HEAD_DIM = 128
PAGE_SIZE = 16
DTYPE = torch.bfloat16


def _bench_ms(fn, grad_to_none=None):
    if not torch.cuda.is_available():  # --smoke on CPU: wall clock, meaningless but exercises the code
        times = []
        for _ in range(3):
            for t in grad_to_none or []:
                t.grad = None
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def _emit(rows, result):
    """Keep the row and print it at once, so that a run cut short still shows what it measured."""
    rows.append(result)
    print("[bench_kernels] " + json.dumps(result), file=sys.stderr, flush=True)


def copy_bandwidth_gbs(sizes, device) -> float:
    src = torch.randn(sizes["copy_elements"], device=device, dtype=DTYPE)
    dst = torch.empty_like(src)
    ms = _bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


# ---------------------------------------------------------------------------------------------------------------------
# RMSNorm


def bench_rms_norm(rows, sizes, device, copy_gbs, use_compile):
    from kernels import reference
    from kernels.rmsnorm import rms_norm

    baselines = {"torch eager": reference.rms_norm,
                 "torch.compile": torch.compile(reference.rms_norm, dynamic=False) if use_compile else None}
    for name, shape in sizes["rms_shapes"]:
        x = torch.randn(shape, device=device, dtype=DTYPE, requires_grad=True)
        weight = (1 + 0.1 * torch.randn(shape[-1], device=device)).to(DTYPE).requires_grad_()
        dy = torch.randn_like(x)
        tensor_bytes = x.numel() * x.element_size()
        for mode, n_passes in (("fwd", 2), ("fwd+bwd", 5)):  # x in, y out | then x and dy in, dx out
            n_bytes = n_passes * tensor_bytes
            ours = n_bytes / _rms_norm_ms(rms_norm, x, weight, dy, mode) / 1e6
            result = {"op": f"rmsnorm {mode}", "shape": f"{name} {tuple(shape)}", "unit": "GB/s", "litere": ours,
                      "check": f"{100 * ours / copy_gbs:.0f}% of copy (goal 80%)", "goal_met": ours >= 0.8 * copy_gbs}
            for baseline, fn in baselines.items():
                try:
                    result[baseline] = n_bytes / _rms_norm_ms(fn, x, weight, dy, mode) / 1e6 if fn else None
                except Exception as exc:  # a failing baseline (e.g. no compiler for torch.compile) reads blank
                    print(f"{baseline} rmsnorm {mode}: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
            _emit(rows, result)


def _rms_norm_ms(fn, x, weight, dy, mode):
    if mode == "fwd":
        with torch.no_grad():
            return _bench_ms(lambda: fn(x, weight, 1e-6))
    return _bench_ms(lambda: fn(x, weight, 1e-6).backward(dy), grad_to_none=[x, weight])


# ---------------------------------------------------------------------------------------------------------------------
# attention


def bench_attention(rows, sizes, device, seqs):
    from kernels.flash_attention import varlen_attention

    n_heads, n_kv_heads = sizes["attn_heads"]
    for seq in seqs:
        batch = max(1, sizes["attn_tokens"] // seq)
        q = torch.randn(batch, seq, n_heads, HEAD_DIM, device=device, dtype=DTYPE)
        k = torch.randn(batch, seq, n_kv_heads, HEAD_DIM, device=device, dtype=DTYPE)
        v = torch.randn_like(k)
        dout = torch.randn_like(q)
        cu = torch.arange(0, batch + 1, device=device, dtype=torch.int32) * seq
        packed = [t.reshape(batch * seq, *t.shape[2:]) for t in (q, k, v, dout)]

        def ours(q_, k_, v_):
            return varlen_attention(q_, k_, v_, cu, seq)

        ours_ms = _attention_ms(ours, packed[:3], packed[3])
        sdpa_note, sdpa, sdpa_inputs = _sdpa_flash(q, k, v)
        sdpa_ms = _attention_ms(sdpa, sdpa_inputs, dout) if sdpa else None
        fwd_flops = 4 * batch * n_heads * seq * seq * HEAD_DIM / 2
        for mode, flops, goal in (("fwd", fwd_flops, 0.8), ("bwd", 2.5 * fwd_flops, 0.7),
                                  ("fwd+bwd", 3.5 * fwd_flops, None)):
            result = {"op": f"attention {mode}", "shape": f"B{batch} S{seq} H{n_heads}/{n_kv_heads} D{HEAD_DIM}",
                      "unit": "TFLOP/s", "litere": flops / ours_ms[mode] / 1e9}
            if sdpa_ms:
                result["SDPA flash"] = flops / sdpa_ms[mode] / 1e9
                ratio = result["litere"] / result["SDPA flash"]
                result["check"] = f"{ratio:.2f}x flash" + (f" (goal {goal}x at S>=4K)" if goal else "")
                result["check"] += f" [{sdpa_note}]" if sdpa_note else ""
                if goal and seq >= 4096:
                    result["goal_met"] = ratio >= goal
            _emit(rows, result)


def _attention_ms(fn, inputs, dout):
    """Median ms of the forward (no autograd) and of forward+backward; the backward is their difference."""
    with torch.no_grad():
        fwd = _bench_ms(lambda: fn(*inputs))
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    both = _bench_ms(lambda: fn(*leaves).backward(dout), grad_to_none=leaves)
    return {"fwd": fwd, "fwd+bwd": both, "bwd": max(both - fwd, 1e-9)}


def _sdpa_flash(q, k, v):
    """SDPA restricted to the flash backend, on (B, H, S, D) views: GQA natively where the backend takes it, else on
    K/V repeated to every query head beforehand (outside the timed region, which only favours SDPA)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(q_, k_, v_):
        gqa = q_.shape[2] != k_.shape[2]
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2),
                                                  is_causal=True, enable_gqa=gqa).transpose(1, 2)

    group = q.shape[2] // k.shape[2]
    repeated = [t.repeat_interleave(group, dim=2) for t in (k, v)]
    for note, inputs in (("", [q, k, v]), ("K/V repeated", [q, *repeated])):
        try:
            probe = [t[:1, :128].detach().clone().requires_grad_() for t in inputs]
            sdpa(*probe).sum().backward()
            return note, sdpa, inputs
        except RuntimeError as exc:
            print(f"SDPA flash ({note or 'enable_gqa'}) unavailable: {exc}".splitlines()[0], file=sys.stderr)
    return "", None, None


# ---------------------------------------------------------------------------------------------------------------------
# paged decode


def bench_decode(rows, sizes, device, copy_gbs):
    from kernels.decode_attention import paged_attention

    n_heads, n_kv_heads = sizes["decode_heads"]
    for batch, context in sizes["decode"]:
        pages_per_seq = context // PAGE_SIZE
        k_cache = torch.randn(batch * pages_per_seq, PAGE_SIZE, n_kv_heads, HEAD_DIM, device=device, dtype=DTYPE)
        v_cache = torch.randn_like(k_cache)
        table = torch.randperm(batch * pages_per_seq, device=device).view(batch, pages_per_seq).to(torch.int32)
        q = torch.randn(batch, n_heads, HEAD_DIM, device=device, dtype=DTYPE)
        cu_q = torch.arange(batch + 1, device=device, dtype=torch.int32)
        seqlens = torch.full((batch,), context, device=device, dtype=torch.int32)
        with torch.no_grad():
            ms = _bench_ms(lambda: paged_attention(q, k_cache, v_cache, table, cu_q, seqlens, 1))
        gbs = 2 * k_cache.numel() * k_cache.element_size() / ms / 1e6
        _emit(rows, {"op": "paged decode", "shape": f"B{batch} ctx{context} H{n_heads}/{n_kv_heads} page{PAGE_SIZE}",
                     "unit": "GB/s", "litere": gbs, "check": f"{100 * gbs / copy_gbs:.0f}% of copy, {ms * 1e3:.0f} us"})


# ---------------------------------------------------------------------------------------------------------------------


def _table(rows, header):
    cols = ["op", "shape", "unit", "litere", "torch eager", "torch.compile", "SDPA flash", "check"]

    def fmt(value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
        return str(value)

    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seqs", default="1024,2048,4096,8192,16384", help="attention sequence lengths")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU with TRITON_INTERPRET=1 works)")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        print("bench_kernels: needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1); nothing measured here")
        print(json.dumps({"benchmark": "kernels", "skipped": "needs CUDA"}))
        return 0
    import triton

    sizes = SMOKE if args.smoke else FULL
    seqs = [64, 128] if args.smoke else [int(s) for s in args.seqs.split(",")]
    device = "cuda" if on_gpu else "cpu"
    card = torch.cuda.get_device_name() if on_gpu else "CPU (interpreter smoke run: numbers mean nothing)"
    copy_gbs = copy_bandwidth_gbs(sizes, device)
    rows = []
    sections = (("attention", lambda: bench_attention(rows, sizes, device, seqs)),
                ("rmsnorm", lambda: bench_rms_norm(rows, sizes, device, copy_gbs, use_compile=on_gpu)),
                ("decode", lambda: bench_decode(rows, sizes, device, copy_gbs)))
    for name, run in sections:
        print(f"[bench_kernels] {name} ...", file=sys.stderr, flush=True)
        run()
    header = (f"Kernels on {card} (torch {torch.__version__}, triton {triton.__version__}); "
              f"device-to-device copy {copy_gbs:.0f} GB/s (read + write)")
    print(_table(rows, header))
    result = {"benchmark": "kernels", "device": card, "torch": torch.__version__, "triton": triton.__version__,
              "copy_gbs": copy_gbs, "rows": rows, "goals_met": all(r.get("goal_met", True) for r in rows)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
