"""Triton RMSNorm vs the PyTorch reference (interpreter on CPU; real Triton in the gpu-marked tests)."""
import pytest
import torch

pytest.importorskip("triton")

import kernels  # noqa: E402
from kernels import reference  # noqa: E402
from kernels.rmsnorm import rms_norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(shape, dtype, weight_dtype, seed, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3).to(device, dtype).requires_grad_()
    weight = (1 + 0.2 * torch.randn(shape[-1], generator=gen)).to(device, weight_dtype).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device, torch.promote_types(dtype, weight_dtype))
    return x, weight, grad


def _forward_backward(fn, x, weight, grad, eps=1e-6):
    y = fn(x, weight, eps)
    dx, dweight = torch.autograd.grad(y, (x, weight), grad)
    return y, dx, dweight


def _relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _compare(shape, dtype, weight_dtype, seed, tol):
    x, weight, grad = _inputs(shape, dtype, weight_dtype, seed)
    got = _forward_backward(rms_norm, x, weight, grad)
    want = _forward_backward(reference.rms_norm, x, weight, grad)
    for name, a, b in zip(("y", "dx", "dweight"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
    for name, a, b in zip(("y", "dx"), got, want):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol, msg=name)
    if dtype == torch.float32:
        torch.testing.assert_close(got[2], want[2], atol=tol, rtol=tol, msg="dweight")
    else:
        # autograd rounds each bf16 product before summing over rows where the kernel sums in fp32, so near-zero
        # sums differ by more than any elementwise tolerance: judge both against a float64 run instead
        exact = _forward_backward(reference.rms_norm, x.detach().double().requires_grad_(),
                                  weight.detach().double().requires_grad_(), grad.double())[2]
        floor = torch.finfo(dtype).eps / 4
        assert _relative_error(got[2], exact) <= 2 * max(_relative_error(want[2], exact), floor)


FP32 = 1e-5
BF16 = 1e-2


@pytest.mark.parametrize("shape", [(5, 37), (3, 4, 128), (2, 1000), (2, 8192)], ids=str)
def test_fp32_matches_reference(shape):
    _compare(shape, torch.float32, torch.float32, seed=0, tol=FP32)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(7, 3, 128), (3, 2560)], ids=str)
def test_bf16_matches_reference(shape, weight_dtype):
    _compare(shape, torch.bfloat16, weight_dtype, seed=1, tol=BF16)


def test_non_contiguous_rows():
    x, weight, grad = _inputs((6, 4, 64), torch.float32, torch.float32, seed=2)
    view = x.transpose(0, 1)  # (4, 6, 64), rows not evenly strided
    got = _forward_backward(rms_norm, view, weight, grad.transpose(0, 1))
    want = _forward_backward(reference.rms_norm, view, weight, grad.transpose(0, 1))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dispatcher_follows_litere_kernels(monkeypatch):
    x, weight, _ = _inputs((4, 96), torch.float32, torch.float32, seed=3)
    monkeypatch.setenv("LITERE_KERNELS", "triton")
    assert kernels.backend(x.device) == "triton"
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-6), rms_norm(x, weight, 1e-6), atol=0, rtol=0)
    monkeypatch.setenv("LITERE_KERNELS", "torch")
    assert kernels.backend(x.device) == "torch"
    monkeypatch.setenv("LITERE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="LITERE_KERNELS"):
        kernels.backend(x.device)


def test_rejects_mismatched_weight():
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm(torch.randn(2, 8, device=DEVICE), torch.ones(4, device=DEVICE), 1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_cpu_without_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# real Triton on a GPU: bf16 at the 4B model's shapes (hidden 2560, 32 query / 8 kv heads of 128)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4096, 2560), (4096, 32, 128), (4096, 8, 128), (512, 8192), (3, 17, 128)], ids=str)
def test_gpu_bf16_4b_shapes(shape):
    _compare(shape, torch.bfloat16, torch.bfloat16, seed=4, tol=BF16)


@pytest.mark.gpu
def test_gpu_bf16_forward_rounds_like_pytorch():
    """Round-to-nearest casts: all but a few elements (1/sqrt rounding at a tie) equal the reference exactly."""
    x, weight, _ = _inputs((1024, 2560), torch.bfloat16, torch.bfloat16, seed=5)
    y, want = rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6)
    assert (y != want).float().mean().item() < 1e-3


@pytest.mark.gpu
def test_gpu_fp32():
    _compare((300, 2560), torch.float32, torch.float32, seed=6, tol=FP32)
