"""RMSNorm over the last dimension in Triton, forward and backward, with Hugging Face numerics.

y = weight * (x * rstd).to(x.dtype) with rstd = rsqrt(mean(x^2) + eps) in fp32; the product is taken in the promoted
dtype of x and weight, as `kernels.reference.rms_norm` does. Rows up to 8192 wide fit one program; short rows (per-head
q/k norm, (T, H, 128) normalised over the last dim) are packed several to a program.
"""
import torch
import triton
import triton.language as tl

from .triton_utils import cast, check_launchable, interpreting, multiprocessor_count

MAX_ROW = 8192
# a program takes max(1, ELEMENTS // padded row width) rows; ~8 elements per thread keeps the backward free of
# register spills (ptxas reports for sm_90) with room for several programs per multiprocessor
_FWD_ELEMENTS = 4096
_BWD_ELEMENTS = 2048
_ELEMENTS_PER_THREAD = 8
_PROGRAMS_PER_SM = 8  # backward: programs that loop over row blocks, each keeping its own dweight partial sum


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, n_rows, n_cols, stride_x, stride_y, eps,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)
    x = tl.load(X + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    normed = cast(x * rstd[:, None], X.dtype.element_ty, INTERPRET)
    y = w[None, :].to(tl.float32) * normed.to(tl.float32)
    tl.store(Y + rows.to(tl.int64)[:, None] * stride_y + cols[None, :], cast(y, Y.dtype.element_ty, INTERPRET),
             mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd(X, W, DY, RSTD, DX, DW_PARTIAL, n_rows, n_cols, stride_x, stride_dy, stride_dx,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr):
    """dx for every row, and per-program fp32 partial sums of dweight (summed over programs by the caller)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for block in range(pid, tl.cdiv(n_rows, BLOCK_M), tl.num_programs(0)):
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        normed = x * rstd[:, None]
        # autograd rounds the gradient of the cast-down normalised x to x's dtype; so do we
        g = cast(dy * w[None, :], X.dtype.element_ty, INTERPRET).to(tl.float32)
        dx = rstd[:, None] * (g - normed * (tl.sum(g * normed, axis=1) / n_cols)[:, None])
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], cast(dx, DX.dtype.element_ty, INTERPRET),
                 mask=mask)
        dw += dy * cast(normed, X.dtype.element_ty, INTERPRET).to(tl.float32)
    tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw, axis=0), mask=col_ok)


def _launch_shape(n_cols: int, elements: int):
    block_n = triton.next_power_of_2(n_cols)
    block_m = max(1, elements // block_n)
    num_warps = min(16, max(4, block_m * block_n // (32 * _ELEMENTS_PER_THREAD)))
    return block_m, block_n, num_warps


def _rows(t: torch.Tensor, n_cols: int) -> torch.Tensor:
    t = t.reshape(-1, n_cols)
    return t if t.stride(-1) == 1 else t.contiguous()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        n_cols = x.shape[-1]
        x2 = _rows(x, n_cols)
        n_rows = x2.shape[0]
        y = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block_m, block_n, num_warps = _launch_shape(n_cols, _FWD_ELEMENTS)
        grid = (triton.cdiv(n_rows, block_m),)
        _rms_norm_fwd[grid](x2, weight, y, rstd, n_rows, n_cols, x2.stride(0), y.stride(0), eps,
                            BLOCK_M=block_m, BLOCK_N=block_n, INTERPRET=interpreting(), num_warps=num_warps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = x2.shape
        dy2 = _rows(dy, n_cols)
        dx = torch.empty_like(x2)
        block_m, block_n, num_warps = _launch_shape(n_cols, _BWD_ELEMENTS)
        n_programs = max(1, min(triton.cdiv(n_rows, block_m), _PROGRAMS_PER_SM * multiprocessor_count(x2.device)))
        dw_partial = torch.empty(n_programs, n_cols, dtype=torch.float32, device=x2.device)
        _rms_norm_bwd[(n_programs,)](x2, weight, dy2, rstd, dx, dw_partial, n_rows, n_cols,
                                     x2.stride(0), dy2.stride(0), dx.stride(0),
                                     BLOCK_M=block_m, BLOCK_N=block_n, INTERPRET=interpreting(), num_warps=num_warps)
        dweight = dw_partial.sum(0).to(weight.dtype)
        return dx.view(ctx.x_shape), dweight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x over its last dimension (at most 8192 wide); weight has that dimension's size."""
    check_launchable("rms_norm", x, weight)
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"kernels.rms_norm: weight shape {tuple(weight.shape)} does not match x's last dim "
                         f"{x.shape[-1]}")
    if x.shape[-1] > MAX_ROW:
        raise ValueError(f"kernels.rms_norm: rows of {x.shape[-1]} exceed the kernel's limit of {MAX_ROW}")
    return _RMSNorm.apply(x, weight.contiguous(), float(eps))
