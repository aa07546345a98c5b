"""Fused mHC coefficient projection (mHC, arXiv 2512.24880, eq. 5-7), forward and backward.

Meaning: `mhc_lm.model.stream_ops.mhc_coefficients_reference` (all fp32):

    v = x / sqrt(mean(x^2) + eps)                    x: (N, K = n*C), one RMSNorm over all n*C values
    z = a * (v phi) + b                              phi: (K, M = 2n + n^2), a per group (pre, post, res)
    H_pre = sigmoid(z[:, :n]);  H_post = 2 sigmoid(z[:, n:2n]);  H~_res = z[:, 2n:] as (N, n, n)

Forward: one pass over x. Since v phi = r * (x phi) with r = rsqrt(mean(x^2) + eps), the
kernel accumulates x phi (tl.dot, fp32 "ieee" precision) and sum(x^2) in the same K loop and
applies r, the gates, the bias and the activations in registers. It also returns the raw
projection p = v phi (N, M) and r (N,) for the backward (M + 1 floats per token vs n*C read).

Backward, with gz = dL/dz (sigmoid derivatives applied on (N, M) in torch, tiny) and
gp = gz * a:
    d bias = sum_t gz;  d a_g = sum_{t, m in g} gz * p
    dv = gp phi^T;  RMSNorm:  dx = r dv - x r^2 (gp . p) / K     (since dv . x = gp . p / r)
    d phi = v^T gp = sum_t r_t x_t^T gp_t
`_coef_dx_kernel` computes dx in one pass over x (the only (N, K) output), `_coef_dphi_kernel`
reduces v^T gp over token splits (a second read of x) into (S, K, M) partials summed in torch.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .launch import Blocks, check_device, device_sms, interpreted, next_pow2, on_device


@triton.jit
def _coef_fwd_kernel(
    X, PHI, ALPHA, BIAS, HPRE, HPOST, LOGITS, PROJ, RSTD, T, K, EPS,
    N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
    m = tl.arange(0, MP)
    tmask = t < T
    mmask = m < M
    acc = tl.zeros((BT, MP), dtype=tl.float32)  # x phi
    ss = tl.zeros((BT,), dtype=tl.float32)  # sum x^2
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < K
        x = tl.load(X + t[:, None] * K + k[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        phi = tl.load(PHI + k[:, None] * M + m[None, :], mask=kmask[:, None] & mmask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(x, phi, acc, input_precision=PREC)  # (BT, MP)
        ss += tl.sum(x * x, axis=1)
    r = 1.0 / tl.sqrt(ss / K + EPS)  # (BT,)
    proj = acc * r[:, None]  # v phi
    a_pre = tl.load(ALPHA).to(tl.float32)
    a_post = tl.load(ALPHA + 1).to(tl.float32)
    a_res = tl.load(ALPHA + 2).to(tl.float32)
    scale = tl.where(m < N, a_pre, tl.where(m < 2 * N, a_post, a_res))  # (MP,)
    b = tl.load(BIAS + m, mask=mmask, other=0.0).to(tl.float32)
    z = proj * scale[None, :] + b[None, :]  # (BT, MP)
    s = tl.sigmoid(z)
    m2 = tmask[:, None] & mmask[None, :]
    is_pre = m < N
    is_post = (m >= N) & (m < 2 * N)
    is_res = (m >= 2 * N) & mmask
    tl.store(HPRE + t[:, None] * N + tl.where(is_pre, m, 0)[None, :], s, mask=tmask[:, None] & is_pre[None, :])
    tl.store(HPOST + t[:, None] * N + tl.where(is_post, m - N, 0)[None, :], 2.0 * s, mask=tmask[:, None] & is_post[None, :])
    tl.store(
        LOGITS + t[:, None] * (N * N) + tl.where(is_res, m - 2 * N, 0)[None, :], z, mask=tmask[:, None] & is_res[None, :]
    )
    tl.store(PROJ + t[:, None] * M + m[None, :], proj, mask=m2)
    tl.store(RSTD + t, r, mask=tmask)


@triton.jit
def _coef_dx_kernel(
    X, PHI, GP, PROJ, RSTD, GX, T, K,
    M: tl.constexpr, MP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
    m = tl.arange(0, MP)
    tmask = t < T
    m2 = tmask[:, None] & (m[None, :] < M)
    gp = tl.load(GP + t[:, None] * M + m[None, :], mask=m2, other=0.0)  # (BT, MP) dL/d(v phi)
    p = tl.load(PROJ + t[:, None] * M + m[None, :], mask=m2, other=0.0)
    r = tl.load(RSTD + t, mask=tmask, other=0.0)
    coef = r * r * tl.sum(gp * p, axis=1) / K  # (BT,)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < K
        phi = tl.load(PHI + k[:, None] * M + m[None, :], mask=kmask[:, None] & (m[None, :] < M), other=0.0).to(tl.float32)
        dv = tl.dot(gp, tl.trans(phi), input_precision=PREC)  # (BT, BK)
        xmask = tmask[:, None] & kmask[None, :]
        x = tl.load(X + t[:, None] * K + k[None, :], mask=xmask, other=0.0).to(tl.float32)
        gx = r[:, None] * dv - x * coef[:, None]
        tl.store(GX + t[:, None] * K + k[None, :], gx.to(GX.dtype.element_ty), mask=xmask)


@triton.jit
def _coef_dphi_kernel(
    X, GP, RSTD, PART, T, K, SPLITS,
    M: tl.constexpr, MP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    kb = tl.program_id(0)
    split = tl.program_id(1)
    k = kb * BK + tl.arange(0, BK)
    kmask = k < K
    m = tl.arange(0, MP)
    acc = tl.zeros((BK, MP), dtype=tl.float32)
    for t0 in range(split * BT, T, SPLITS * BT):
        t = (t0 + tl.arange(0, BT)).to(tl.int64)
        tmask = t < T
        r = tl.load(RSTD + t, mask=tmask, other=0.0)
        v = tl.load(X + t[:, None] * K + k[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        v = v * r[:, None]  # (BT, BK)
        gp = tl.load(GP + t[:, None] * M + m[None, :], mask=tmask[:, None] & (m[None, :] < M), other=0.0)
        acc = tl.dot(tl.trans(v), gp, acc, input_precision=PREC)  # (BK, MP)
    tl.store(
        PART + split * (K * M) + k[:, None] * M + m[None, :], acc, mask=kmask[:, None] & (m[None, :] < M)
    )


@dataclasses.dataclass(frozen=True)
class CoefPlan:
    """Launch plan of the coefficient kernels: `main` for the forward and dx kernels (BT tokens x BC
    of the n*C axis), `dphi` for the split-token dphi reduction, `precision` for `tl.dot`."""

    main: Blocks
    dphi: Blocks
    precision: str


def plan(T: int, K: int, M: int, device: torch.device) -> CoefPlan:
    """CUDA policy, chosen from the sm_90 ptxas report (benchmarks/kernel_resources.py; no spills):

    - n <= 4 (M <= 24, MP <= 32): `tf32x3` dots (tensor cores, error close to fp32: reduced precision is
      allowed for the v phi projection only, docs/kernels.md), 64 x 32 tiles for fwd / dx, 16 tokens x 64 for dphi. With fp32 "ieee" dots the
      projection runs on the FMA units and is compute-bound (2M flops per element of x).
    - n > 4: fp32 "ieee" dots on 32 x 32 tiles (tf32x3 tiles of this width spill).

    The dphi reduction over tokens is split so that (K / BK) x splits programs fill the device about
    4 times over. Interpreter: up to 128 tokens x 128, "ieee", one split.
    """
    if interpreted() or device.type != "cuda":
        b = Blocks(BT=max(16, min(128, next_pow2(T))), BC=128, warps=4, splits=1)
        return CoefPlan(main=b, dphi=b, precision="ieee")
    MP = max(16, next_pow2(M))
    if MP <= 32:
        main, (dBT, dBK), precision = Blocks(BT=64, BC=32, warps=4), (16, 64), "tf32x3"
    else:
        main, (dBT, dBK), precision = Blocks(BT=32, BC=32, warps=4), (32, 32), "ieee"
    splits = max(1, min(triton.cdiv(T, dBT), triton.cdiv(4 * device_sms(device), triton.cdiv(K, dBK))))
    return CoefPlan(main=main, dphi=Blocks(BT=dBT, BC=dBK, warps=4, splits=splits), precision=precision)


@torch.library.custom_op("mhc_lm::mhc_coefficients", mutates_args=())
def _coef_op(
    x_flat: torch.Tensor, phi: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor, n: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_device("fused_mhc_coefficients", x_flat, phi, alpha, bias)
    x, phi, alpha, bias = (t.contiguous() for t in (x_flat, phi, alpha, bias))
    T, K = x.shape
    M = 2 * n + n * n
    kw = dict(dtype=torch.float32, device=x.device)
    h_pre, h_post = torch.empty((T, n), **kw), torch.empty((T, n), **kw)
    logits, proj, rstd = torch.empty((T, n, n), **kw), torch.empty((T, M), **kw), torch.empty((T,), **kw)
    if T:
        p = plan(T, K, M, x.device)
        b = p.main
        with on_device(x):
            _coef_fwd_kernel[(triton.cdiv(T, b.BT),)](
                x, phi, alpha, bias, h_pre, h_post, logits, proj, rstd, T, K, float(eps),
                N=n, M=M, MP=max(16, next_pow2(M)), BT=b.BT, BK=b.BC, PREC=p.precision, num_warps=b.warps,
            )
    return h_pre, h_post, logits, proj, rstd


@_coef_op.register_fake
def _(x_flat, phi, alpha, bias, n, eps):
    T = x_flat.shape[0]
    new = lambda *s: x_flat.new_empty(s, dtype=torch.float32)  # noqa: E731
    return new(T, n), new(T, n), new(T, n, n), new(T, 2 * n + n * n), new(T)


@torch.library.custom_op("mhc_lm::mhc_coefficients_backward", mutates_args=())
def _coef_backward_op(
    x_flat: torch.Tensor, phi: torch.Tensor, grad_proj: torch.Tensor, proj: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx_flat, dL/dphi) given grad_proj = dL/d(v phi) (N, M) fp32."""
    x, phi, gp = x_flat.contiguous(), phi.contiguous(), grad_proj.contiguous()
    T, K = x.shape
    M = phi.shape[1]
    gx = torch.empty_like(x)
    if T == 0:
        return gx, torch.zeros_like(phi)
    p = plan(T, K, M, x.device)
    b, d = p.main, p.dphi
    MP = max(16, next_pow2(M))
    part = torch.empty((d.splits, K, M), dtype=torch.float32, device=x.device)
    with on_device(x):
        _coef_dx_kernel[(triton.cdiv(T, b.BT),)](
            x, phi, gp, proj, rstd, gx, T, K, M=M, MP=MP, BT=b.BT, BK=b.BC, PREC=p.precision, num_warps=b.warps
        )
        _coef_dphi_kernel[(triton.cdiv(K, d.BC), d.splits)](
            x, gp, rstd, part, T, K, d.splits, M=M, MP=MP, BT=d.BT, BK=d.BC, PREC=p.precision, num_warps=d.warps
        )
    return gx, part.sum(0).to(phi.dtype)


@_coef_backward_op.register_fake
def _(x_flat, phi, grad_proj, proj, rstd):
    return (torch.empty_like(x_flat, memory_format=torch.contiguous_format),
            torch.empty_like(phi, memory_format=torch.contiguous_format))


def _setup(ctx, inputs, output):
    x_flat, phi, alpha, bias, n, eps = inputs
    h_pre, h_post, _, proj, rstd = output
    ctx.mark_non_differentiable(proj, rstd)
    ctx.save_for_backward(x_flat, phi, alpha, bias, h_pre, h_post, proj, rstd)
    ctx.n = n


def _backward(ctx, g_pre, g_post, g_logits, _g_proj, _g_rstd):
    x_flat, phi, alpha, bias, h_pre, h_post, proj, rstd = ctx.saved_tensors
    n, T = ctx.n, x_flat.shape[0]
    zeros = lambda *s: proj.new_zeros(s)  # noqa: E731
    g_pre = zeros(T, n) if g_pre is None else g_pre.float()
    g_post = zeros(T, n) if g_post is None else g_post.float()
    g_logits = zeros(T, n, n) if g_logits is None else g_logits.float()
    g_z = torch.cat(  # dL/dz (N, M): sigmoid' = s(1 - s); (2 s)' = h_post (1 - h_post / 2)
        [g_pre * h_pre * (1.0 - h_pre), g_post * h_post * (1.0 - 0.5 * h_post), g_logits.reshape(T, n * n)], dim=1
    )
    scale = torch.cat([alpha[0].expand(n), alpha[1].expand(n), alpha[2].expand(n * n)]).float()  # (M,)
    gzp = g_z * proj  # (N, M)
    grad_alpha = torch.stack([gzp[:, :n].sum(), gzp[:, n : 2 * n].sum(), gzp[:, 2 * n :].sum()]).to(alpha.dtype)
    grad_bias = g_z.sum(0).to(bias.dtype)
    grad_x, grad_phi = _coef_backward_op(x_flat, phi, g_z * scale, proj, rstd)
    return grad_x, grad_phi, grad_alpha, grad_bias, None, None


torch.library.register_autograd("mhc_lm::mhc_coefficients", _backward, setup_context=_setup)


def fused_mhc_coefficients(
    x_flat: torch.Tensor, phi: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor, n: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_flat (N, n*C), phi (n*C, 2n + n^2), alpha (3,), bias (2n + n^2,) -> H_pre (N, n), H_post (N, n),
    Sinkhorn logits H~_res (N, n, n), all fp32; same maths as `mhc_coefficients_reference`."""
    M = 2 * n + n * n
    if x_flat.dim() != 2 or tuple(phi.shape) != (x_flat.shape[1], M) or alpha.numel() != 3 or tuple(bias.shape) != (M,):
        raise ValueError(
            f"fused_mhc_coefficients: for n = {n} expected x_flat (N, K), phi (K, {M}), alpha (3,), bias ({M},); "
            f"got {tuple(x_flat.shape)}, {tuple(phi.shape)}, {tuple(alpha.shape)}, {tuple(bias.shape)}"
        )
    with torch.autocast(device_type=x_flat.device.type, enabled=False):
        h_pre, h_post, logits, _, _ = _coef_op(x_flat, phi, alpha.reshape(3), bias, int(n), float(eps))
    return h_pre, h_post, logits
