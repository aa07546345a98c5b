"""Fused Sinkhorn-Knopp on n x n per token (mHC, arXiv 2512.24880, eq. 8-9), forward and backward.

Meaning: `mhc_lm.model.sinkhorn.sinkhorn_reference` (fp32), which the tests compare against:

    P0 = softmax(L, dim=-1) + eps               # max-subtracted exp + the first row normalisation
    P1 = P0 / (P0.sum(-2) + eps)                 # step 1: columns (dim -2, tile axis 1)
    repeat iters - 1 times: rows (dim -1), then columns
    iters == 0: P = P0 / P0.sum(-2)              # still valid: columns (the new streams' weights) sum to 1

One program holds BT tokens' n x n tiles in registers as a (BT, NP, NP) block, NP = next
power of two >= n (padding masked to 0). The forward writes only the result.

Backward recomputes instead of storing: every normalisation p_out = p / (s + eps) has
    dL/dp = (g - sum_axis(g * p_out)) / (s + eps),
which needs the step's *input*. Going back through the steps last to first, the kernel
recomputes each step's input from P0 (kept in registers) by re-running the forward up to it:
O(iters^2) flops on n^2 values per token, zero extra memory traffic (reads L and dL/dP,
writes dL/dL). The softmax row max is differentiated exactly as autograd does (it cancels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Blocks, check_device, interpreted, next_pow2, on_device


@triton.jit
def _normalise(p, EPS, AXIS: tl.constexpr):
    """p / (sum over AXIS + EPS): AXIS 1 = columns (dim -2), AXIS 2 = rows (dim -1)."""
    s = tl.sum(p, axis=AXIS)
    return p / (tl.expand_dims(s, AXIS) + EPS)


@triton.jit
def _normalise_bwd(p_in, g, mask, EPS, AXIS: tl.constexpr):
    """Gradient w.r.t. the input p_in of `_normalise`, given g = dL/d(output)."""
    d = tl.expand_dims(tl.sum(p_in, axis=AXIS), AXIS) + EPS
    out = p_in / d
    g_in = (g - tl.expand_dims(tl.sum(g * out, axis=AXIS), AXIS)) / d
    return tl.where(mask, g_in, 0.0)  # padded cells would divide by eps alone: keep them 0


@triton.jit
def _load_tile(ptr, T, N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr):
    """(BT, NP, NP) fp32 tile of tokens [pid*BT, pid*BT + BT), its offsets and mask."""
    pid = tl.program_id(0)
    t = (pid * BT + tl.arange(0, BT)).to(tl.int64)
    i = tl.arange(0, NP)
    j = tl.arange(0, NP)
    t3 = t[:, None, None]
    i3 = i[None, :, None]
    j3 = j[None, None, :]
    offs = t3 * (N * N) + i3 * N + j3
    mask = (t3 < T) & (i3 < N) & (j3 < N)
    x = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return x, offs, mask


@triton.jit
def _softmax_rows(L, mask):
    """Row softmax of the tile, 0 on padding (padded logits act as -1e30, finite: no NaN rows)."""
    L = tl.where(mask, L, -1e30)
    m = tl.max(L, axis=2)
    e = tl.exp(L - tl.expand_dims(m, 2))
    e = tl.where(mask, e, 0.0)
    s = tl.sum(e, axis=2)
    return e / tl.expand_dims(tl.maximum(s, 1e-30), 2)


@triton.jit
def _sinkhorn_fwd_kernel(L_ptr, P_ptr, T, EPS, N: tl.constexpr, NP: tl.constexpr, ITERS: tl.constexpr, BT: tl.constexpr):
    L, offs, mask = _load_tile(L_ptr, T, N, NP, BT)  # (BT, NP, NP)
    p = tl.where(mask, _softmax_rows(L, mask) + EPS, 0.0)  # P0
    if ITERS == 0:
        p = _normalise(p, 1e-30, 1)  # columns, no eps in this sum; 1e-30 only keeps padded columns finite
    else:
        p = _normalise(p, EPS, 1)
        for _ in range(ITERS - 1):
            p = _normalise(p, EPS, 2)
            p = _normalise(p, EPS, 1)
    tl.store(P_ptr + offs, p, mask=mask)


@triton.jit
def _sinkhorn_bwd_kernel(
    L_ptr, G_ptr, GL_ptr, T, EPS, N: tl.constexpr, NP: tl.constexpr, ITERS: tl.constexpr, BT: tl.constexpr
):
    L, offs, mask = _load_tile(L_ptr, T, N, NP, BT)
    g = tl.load(G_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # dL/dP
    sm = _softmax_rows(L, mask)
    p0 = tl.where(mask, sm + EPS, 0.0)
    if ITERS == 0:
        g = _normalise_bwd(p0, g, mask, 1e-30, 1)
    else:
        # pairs q = ITERS-1 .. 1: (row step 2q, column step 2q+1); their input P_{2q-1} is
        # recomputed from P0 (column step, then q-1 row/column pairs).
        for qq in range(0, ITERS - 1):
            q = ITERS - 1 - qq
            p = _normalise(p0, EPS, 1)
            for _ in range(q - 1):
                p = _normalise(p, EPS, 2)
                p = _normalise(p, EPS, 1)
            p_mid = _normalise(p, EPS, 2)
            g = _normalise_bwd(p_mid, g, mask, EPS, 1)
            g = _normalise_bwd(p, g, mask, EPS, 2)
        g = _normalise_bwd(p0, g, mask, EPS, 1)  # step 1 (columns) on P0
    # P0 = softmax + eps: softmax backward along rows.
    gl = sm * (g - tl.expand_dims(tl.sum(g * sm, axis=2), 2))
    tl.store(GL_ptr + offs, gl, mask=mask)


def _tiles(logits: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    n = logits.shape[-1]
    if logits.dim() < 2 or logits.shape[-2] != n:
        raise ValueError(f"fused_sinkhorn: logits must be (..., n, n), got {tuple(logits.shape)}")
    flat = logits.reshape(-1, n, n).contiguous()  # (T, n, n)
    return flat, flat.shape[0], n


def blocks(T: int, n: int, device: torch.device) -> Blocks:
    """CUDA: 1024 / NP^2 tokens per program (64 at n = 4), 4 warps; interpreter: up to 256 tokens."""
    if interpreted() or device.type != "cuda":
        return Blocks(BT=min(256, next_pow2(T)), BC=1, warps=4)
    return Blocks(BT=max(1, 1024 // next_pow2(n) ** 2), BC=1, warps=4)


def _grid(T: int, n: int, device: torch.device) -> tuple[int, tuple[int]]:
    b = blocks(T, n, device)
    return b.BT, (triton.cdiv(T, b.BT),)


@torch.library.custom_op("mhc_lm::sinkhorn", mutates_args=())
def _sinkhorn_op(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    check_device("fused_sinkhorn", logits)
    flat, T, n = _tiles(logits)
    out = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    if T:
        BT, grid = _grid(T, n, logits.device)
        with on_device(flat):
            _sinkhorn_fwd_kernel[grid](flat, out, T, float(eps), N=n, NP=next_pow2(n), ITERS=int(iters), BT=BT)
    return out.view(logits.shape)


@_sinkhorn_op.register_fake
def _(logits, iters, eps):
    return torch.empty(logits.shape, dtype=torch.float32, device=logits.device)


@torch.library.custom_op("mhc_lm::sinkhorn_backward", mutates_args=())
def _sinkhorn_backward_op(logits: torch.Tensor, grad: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    flat, T, n = _tiles(logits)
    g = grad.reshape(flat.shape).contiguous()
    grad_logits = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    if T:
        BT, grid = _grid(T, n, logits.device)
        with on_device(flat):
            _sinkhorn_bwd_kernel[grid](flat, g, grad_logits, T, float(eps), N=n, NP=next_pow2(n), ITERS=int(iters), BT=BT)
    return grad_logits.view(logits.shape).to(logits.dtype)


@_sinkhorn_backward_op.register_fake
def _(logits, grad, iters, eps):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    logits, iters, eps = inputs
    ctx.save_for_backward(logits)
    ctx.iters, ctx.eps = iters, eps


def _backward(ctx, grad):
    (logits,) = ctx.saved_tensors
    return _sinkhorn_backward_op(logits, grad, ctx.iters, ctx.eps), None, None


torch.library.register_autograd("mhc_lm::sinkhorn", _backward, setup_context=_setup)


def fused_sinkhorn(logits: torch.Tensor, iters: int = 20, eps: float = 1e-6) -> torch.Tensor:
    """Triton Sinkhorn-Knopp over the last two dims; same maths and fp32 output as `sinkhorn_reference`.

    Computes in float32: float64 logits are refused (the model's `fused_ops.dispatch` sends them,
    and n above the kernel's limit, to the reference).
    """
    if iters < 0:
        raise ValueError(f"sinkhorn_iters must be >= 0, got {iters}")
    if logits.dtype == torch.float64:
        raise ValueError("fused_sinkhorn computes in float32; use sinkhorn_reference for float64 logits")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _sinkhorn_op(logits, int(iters), float(eps))
