"""Fused pre-mix and post + residual merge of HC/mHC (mHC arXiv 2512.24880 eq. 3; HC arXiv 2409.19606).

Meaning: `mhc_lm.model.stream_ops.pre_mix_reference` / `post_res_reference` (fp32 accumulation,
result in x's dtype). N tokens, n streams, C channels; h matrices use [old i, new j]:

    pre_mix:   y[t, c]    = sum_i h_pre[t, i] x[t, i, c]                          reads nC, writes C
    post_res:  out[t,j,c] = sum_i h_res[t, i, j] x[t, i, c] + h_post[t, j] f[t, c]   reads (n+1)C, writes nC

Backward (one pass each, the per-token n / n x n reductions over C accumulated in registers):

    pre_mix:   dx[t,i,c] = h_pre[t,i] g[t,c];   dh_pre[t,i] = sum_c x[t,i,c] g[t,c]
    post_res:  dx[t,i,c] = sum_j h_res[t,i,j] g[t,j,c];   df[t,c] = sum_j h_post[t,j] g[t,j,c]
               dh_res[t,i,j] = sum_c x[t,i,c] g[t,j,c];   dh_post[t,j] = sum_c g[t,j,c] f[t,c]

HC's width and depth connections (h = A_m^T H, H' = B^T F(h) + A_r^T H) are these same two ops
with h_pre = A_m, h_res = A_r (unconstrained, no Sinkhorn) and h_post = B, so HC uses them as is.

x, f and g are each read once and every output written once (the memory-bound minimum). The
forward kernels run on a 2-D grid of (token block, channel block) programs; the backward kernels
loop over channels to reduce dh over C, optionally split over several programs per token block
whose partial sums the caller adds. Block shapes: `launch.mix_blocks`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Blocks, channel_vec, check_device, mix_blocks, next_pow2, on_device


@triton.jit
def _pre_mix_fwd_kernel(
    X, H, Y, T, C, N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, VEC: tl.constexpr
):
    C = (C // VEC) * VEC  # a no-op that tells Triton C is a multiple of VEC: vector loads at any C
    # 2-D grid (token blocks, channel blocks): no reduction over C, so no loop
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    i = tl.arange(0, NP)
    tmask = t < T
    cmask = c < C
    hmask = tmask[:, None] & (i[None, :] < N)
    h = tl.load(H + t[:, None] * N + i[None, :], mask=hmask, other=0.0).to(tl.float32)  # (BT, NP)
    x = tl.load(
        X + t[:, None, None] * (N * C) + i[None, :, None] * C + c[None, None, :],
        mask=hmask[:, :, None] & cmask[None, None, :],
        other=0.0,
    ).to(tl.float32)  # (BT, NP, BC)
    y = tl.sum(h[:, :, None] * x, axis=1)  # (BT, BC)
    tl.store(Y + t[:, None] * C + c[None, :], y.to(Y.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])


@triton.jit
def _pre_mix_bwd_kernel(
    X, H, G, GX, GH, T, C, SPLITS, N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, VEC: tl.constexpr
):
    C = (C // VEC) * VEC  # a no-op that tells Triton C is a multiple of VEC: vector loads at any C
    # grid (token blocks, SPLITS): program s walks channel chunks s, s + SPLITS, ... and writes its
    # partial dh_pre to GH[s] (summed over splits by the caller)
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
    s = tl.program_id(1)
    i = tl.arange(0, NP)
    tmask = t < T
    hmask = tmask[:, None] & (i[None, :] < N)
    h = tl.load(H + t[:, None] * N + i[None, :], mask=hmask, other=0.0).to(tl.float32)  # (BT, NP)
    gh = tl.zeros((BT, NP), dtype=tl.float32)
    for c0 in range(s * BC, C, SPLITS * BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        g = tl.load(G + t[:, None] * C + c[None, :], mask=tmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        offs = t[:, None, None] * (N * C) + i[None, :, None] * C + c[None, None, :]
        m3 = hmask[:, :, None] & cmask[None, None, :]
        x = tl.load(X + offs, mask=m3, other=0.0).to(tl.float32)  # (BT, NP, BC)
        tl.store(GX + offs, (h[:, :, None] * g[:, None, :]).to(GX.dtype.element_ty), mask=m3)
        gh += tl.sum(x * g[:, None, :], axis=2)
    tl.store(GH + s.to(tl.int64) * T * N + t[:, None] * N + i[None, :], gh, mask=hmask)


@triton.jit
def _post_res_fwd_kernel(
    X, F, HR, HP, OUT, T, C, N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, VEC: tl.constexpr
):
    C = (C // VEC) * VEC  # a no-op that tells Triton C is a multiple of VEC: vector loads at any C
    # 2-D grid (token blocks, channel blocks); the (BT, NP, BC) stream tile is read once and
    # each new stream j is a sum over the in-thread old-stream axis
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    i = tl.arange(0, NP)
    tmask = t < T
    cmask = c < C
    imask = tmask[:, None] & (i[None, :] < N)  # (BT, NP)
    m2 = tmask[:, None] & cmask[None, :]
    x = tl.load(
        X + t[:, None, None] * (N * C) + i[None, :, None] * C + c[None, None, :],
        mask=imask[:, :, None] & cmask[None, None, :],
        other=0.0,
    ).to(tl.float32)  # (BT, NP, BC) = x[t, i, c]
    f = tl.load(F + t[:, None] * C + c[None, :], mask=m2, other=0.0).to(tl.float32)  # (BT, BC)
    for j in tl.static_range(N):
        hr_j = tl.load(HR + t[:, None] * (N * N) + i[None, :] * N + j, mask=imask, other=0.0).to(tl.float32)
        hp_j = tl.load(HP + t * N + j, mask=tmask, other=0.0).to(tl.float32)  # (BT,)
        out_j = tl.sum(hr_j[:, :, None] * x, axis=1) + hp_j[:, None] * f  # (BT, BC)
        tl.store(OUT + t[:, None] * (N * C) + j * C + c[None, :], out_j.to(OUT.dtype.element_ty), mask=m2)


@triton.jit
def _post_res_bwd_kernel(
    X, F, HR, HP, G, GX, GF, GHR, GHP, T, C, SPLITS,
    N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, VEC: tl.constexpr,
):
    C = (C // VEC) * VEC  # a no-op that tells Triton C is a multiple of VEC: vector loads at any C
    # grid (token blocks, SPLITS) as in _pre_mix_bwd_kernel; partial dh_res / dh_post per split
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
    s = tl.program_id(1)
    j = tl.arange(0, NP)
    tmask = t < T
    jmask = tmask[:, None] & (j[None, :] < N)
    hp = tl.load(HP + t[:, None] * N + j[None, :], mask=jmask, other=0.0).to(tl.float32)  # (BT, NP)
    ghr = tl.zeros((BT, NP, NP), dtype=tl.float32)  # [t, i, j]
    ghp = tl.zeros((BT, NP), dtype=tl.float32)
    rows = tl.arange(0, NP)[None, :, None]
    for c0 in range(s * BC, C, SPLITS * BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        m2 = tmask[:, None] & cmask[None, :]
        g = tl.load(
            G + t[:, None, None] * (N * C) + j[None, :, None] * C + c[None, None, :],
            mask=jmask[:, :, None] & cmask[None, None, :],
            other=0.0,
        ).to(tl.float32)  # (BT, NP, BC) = dL/dout[t, j, c]
        f = tl.load(F + t[:, None] * C + c[None, :], mask=m2, other=0.0).to(tl.float32)
        gf = tl.sum(hp[:, :, None] * g, axis=1)  # (BT, BC)
        tl.store(GF + t[:, None] * C + c[None, :], gf.to(GF.dtype.element_ty), mask=m2)
        ghp += tl.sum(g * f[:, None, :], axis=2)
        for i in tl.static_range(N):
            hr_i = tl.load(HR + t[:, None] * (N * N) + i * N + j[None, :], mask=jmask, other=0.0).to(tl.float32)
            gx_i = tl.sum(hr_i[:, :, None] * g, axis=1)  # (BT, BC)
            tl.store(GX + t[:, None] * (N * C) + i * C + c[None, :], gx_i.to(GX.dtype.element_ty), mask=m2)
            x_i = tl.load(X + t[:, None] * (N * C) + i * C + c[None, :], mask=m2, other=0.0).to(tl.float32)
            row = tl.sum(x_i[:, None, :] * g, axis=2)  # (BT, NP): dL/dh_res[t, i, :]
            ghr += tl.where(rows == i, row[:, None, :], 0.0)
    tl.store(GHP + s.to(tl.int64) * T * N + t[:, None] * N + j[None, :], ghp, mask=jmask)
    ii = tl.arange(0, NP)
    tl.store(
        GHR + s.to(tl.int64) * T * N * N + t[:, None, None] * (N * N) + ii[None, :, None] * N + j[None, None, :],
        ghr,
        mask=tmask[:, None, None] & (ii[None, :, None] < N) & (j[None, None, :] < N),
    )


# Block-shape policy; tests swap it to force the CUDA shapes (one token, several splits) in the interpreter.
blocks = mix_blocks


def _fwd_grid(T: int, C: int, b: Blocks) -> tuple[int, int]:
    return triton.cdiv(T, b.BT), triton.cdiv(C, b.BC)


def _bwd_grid(T: int, b: Blocks) -> tuple[int, int]:
    return triton.cdiv(T, b.BT), b.splits


def _check_pre(x: torch.Tensor, h_pre: torch.Tensor) -> None:
    if x.dim() != 3 or h_pre.shape != x.shape[:2]:
        raise ValueError(f"fused_pre_mix: expected x (N, n, C) and h_pre (N, n), got {tuple(x.shape)} and {tuple(h_pre.shape)}")


def _check_post(x, f_out, h_res, h_post) -> None:
    if x.dim() != 3:
        raise ValueError(f"fused_post_res: x must be (N, n, C), got {tuple(x.shape)}")
    N, n, C = x.shape
    want = {"f_out": (N, C), "h_res": (N, n, n), "h_post": (N, n)}
    for name, t in (("f_out", f_out), ("h_res", h_res), ("h_post", h_post)):
        if tuple(t.shape) != want[name]:
            raise ValueError(f"fused_post_res: {name} must be {want[name]} for x {tuple(x.shape)}, got {tuple(t.shape)}")


def _dense(t: torch.Tensor) -> torch.Tensor:
    """Fake output like t but contiguous, as the real ops return (they call .contiguous() first)."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- pre_mix
@torch.library.custom_op("mhc_lm::pre_mix", mutates_args=())
def _pre_mix_op(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    check_device("fused_pre_mix", x, h_pre)
    _check_pre(x, h_pre)
    x, h_pre = x.contiguous(), h_pre.contiguous()
    N, n, C = x.shape
    y = torch.empty((N, C), dtype=x.dtype, device=x.device)
    if N and C:
        b = blocks(N, C, n, x.dtype, x.device, backward=False)
        with on_device(x):
            _pre_mix_fwd_kernel[_fwd_grid(N, C, b)](
                x, h_pre, y, N, C, N=n, NP=next_pow2(n), BT=b.BT, BC=b.BC, VEC=channel_vec(C), num_warps=b.warps,
            )
    return y


@_pre_mix_op.register_fake
def _(x, h_pre):
    return x.new_empty((x.shape[0], x.shape[2]))


@torch.library.custom_op("mhc_lm::pre_mix_backward", mutates_args=())
def _pre_mix_backward_op(x: torch.Tensor, h_pre: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, h_pre, grad = x.contiguous(), h_pre.contiguous(), grad.contiguous()
    N, n, C = x.shape
    gx = torch.empty_like(x)
    if not (N and C):
        return gx, torch.zeros_like(h_pre)
    b = blocks(N, C, n, x.dtype, x.device, backward=True)
    gh = torch.empty((b.splits, N, n), dtype=torch.float32, device=x.device)
    with on_device(x):
        _pre_mix_bwd_kernel[_bwd_grid(N, b)](
            x, h_pre, grad, gx, gh, N, C, b.splits,
            N=n, NP=next_pow2(n), BT=b.BT, BC=b.BC, VEC=channel_vec(C), num_warps=b.warps,
        )
    return gx, gh.sum(0).to(h_pre.dtype)


@_pre_mix_backward_op.register_fake
def _(x, h_pre, grad):
    return _dense(x), _dense(h_pre)


def _pre_mix_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _pre_mix_backward(ctx, grad):
    x, h_pre = ctx.saved_tensors
    return _pre_mix_backward_op(x, h_pre, grad)


torch.library.register_autograd("mhc_lm::pre_mix", _pre_mix_backward, setup_context=_pre_mix_setup)


# ---------------------------------------------------------------- post_res
@torch.library.custom_op("mhc_lm::post_res", mutates_args=())
def _post_res_op(x: torch.Tensor, f_out: torch.Tensor, h_res: torch.Tensor, h_post: torch.Tensor) -> torch.Tensor:
    check_device("fused_post_res", x, f_out, h_res, h_post)
    _check_post(x, f_out, h_res, h_post)
    x, f_out, h_res, h_post = (t.contiguous() for t in (x, f_out, h_res, h_post))
    N, n, C = x.shape
    out = torch.empty_like(x)
    if N and C:
        b = blocks(N, C, n, x.dtype, x.device, backward=False)
        with on_device(x):
            _post_res_fwd_kernel[_fwd_grid(N, C, b)](
                x, f_out, h_res, h_post, out, N, C,
                N=n, NP=next_pow2(n), BT=b.BT, BC=b.BC, VEC=channel_vec(C), num_warps=b.warps,
            )
    return out


@_post_res_op.register_fake
def _(x, f_out, h_res, h_post):
    return _dense(x)


@torch.library.custom_op("mhc_lm::post_res_backward", mutates_args=())
def _post_res_backward_op(
    x: torch.Tensor, f_out: torch.Tensor, h_res: torch.Tensor, h_post: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, f_out, h_res, h_post, grad = (t.contiguous() for t in (x, f_out, h_res, h_post, grad))
    N, n, C = x.shape
    gx, gf = torch.empty_like(x), torch.empty_like(f_out)
    if not (N and C):
        return gx, gf.zero_(), torch.zeros_like(h_res), torch.zeros_like(h_post)
    b = blocks(N, C, n, x.dtype, x.device, backward=True)
    ghr = torch.empty((b.splits, N, n, n), dtype=torch.float32, device=x.device)
    ghp = torch.empty((b.splits, N, n), dtype=torch.float32, device=x.device)
    with on_device(x):
        _post_res_bwd_kernel[_bwd_grid(N, b)](
            x, f_out, h_res, h_post, grad, gx, gf, ghr, ghp, N, C, b.splits,
            N=n, NP=next_pow2(n), BT=b.BT, BC=b.BC, VEC=channel_vec(C), num_warps=b.warps,
        )
    return gx, gf, ghr.sum(0).to(h_res.dtype), ghp.sum(0).to(h_post.dtype)


@_post_res_backward_op.register_fake
def _(x, f_out, h_res, h_post, grad):
    return _dense(x), _dense(f_out), _dense(h_res), _dense(h_post)


def _post_res_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _post_res_backward(ctx, grad):
    return _post_res_backward_op(*ctx.saved_tensors, grad)


torch.library.register_autograd("mhc_lm::post_res", _post_res_backward, setup_context=_post_res_setup)


def fused_pre_mix(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """x (N, n, C), h_pre (N, n) -> (N, C) in x's dtype: the layer input H_pre x_l (HC: A_m^T H)."""
    return _pre_mix_op(x, h_pre)


def fused_post_res(x: torch.Tensor, f_out: torch.Tensor, h_res: torch.Tensor, h_post: torch.Tensor) -> torch.Tensor:
    """x (N, n, C), f_out (N, C), h_res (N, n, n) [old i, new j], h_post (N, n) -> (N, n, C) in x's dtype.

    H_res x_l + H_post^T f in one pass (HC: A_r^T H + B^T f).
    """
    return _post_res_op(x, f_out, h_res, h_post)


def fused_post_res_backward(x, f_out, h_res, h_post, grad):
    """(dx, df, dh_res, dh_post) of `fused_post_res` for grad = dL/d(out): the model's post + residual
    node (`stream_ops.post_res`) calls it directly, so block recompute can supply a rebuilt x."""
    return _post_res_backward_op(x, f_out, h_res, h_post, grad)
