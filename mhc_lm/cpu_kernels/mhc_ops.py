"""mHC's mix-in (sinkhorn map) on the CPU as one torch op: the projection and dphi / dx's phi term
are BLAS matmuls, the rest `mhc_mix_in.py`'s loops and the Sinkhorn kernel (`sinkhorn.py`). Same
signature, semantics and outputs as `mhc_lm.model.stream_ops.mhc_mix_in_reference`, in float32.

One autograd node instead of the reference's norm, projection, gate, sigmoid, Sinkhorn and pre-mix
nodes: in backward, x's gradient is made once (the reference makes one per consumer and sums
them). With `stream_grad=True` the op also returns a view of x for post + residual to read and
adds that view's gradient into x's in the same pass (`hc_ops.py` does the same for HC).
"""

from __future__ import annotations

import torch

from . import mhc_mix_in as _mm
from . import sinkhorn as _sk
from .cache_lock import run
from .ops import _flush_below, _np, _np_param, _scalar, _threads, _tokens_last, apply_mix_in


class _CpuMhcMixIn(torch.autograd.Function):
    """Saves x, phi, the gates, P, r, H_pre, H_post and the logits (the Sinkhorn backward re-runs
    the iteration from them)."""

    @staticmethod
    def forward(ctx, x, phi, alpha, bias, eps, iters, sinkhorn_eps, stream_grad):
        N, n, C = x.shape
        f32 = torch.float32
        x32 = x.detach().to(f32).contiguous()
        phi32 = phi.detach().to(f32)
        p = torch.mm(x32.view(N, n * C), phi32)  # (N, K)
        K = p.shape[1]
        a = alpha.detach().to(f32)
        gate = torch.cat([a[0:1].expand(n), a[1:2].expand(n), a[2:3].expand(K - 2 * n)]).contiguous()
        out, r = torch.empty(N, C, dtype=f32), torch.empty(N, dtype=f32)
        h_pre, h_post = torch.empty(N, n, dtype=f32), torch.empty(N, n, dtype=f32)
        logits, h_res = torch.empty(n, n, N, dtype=f32), torch.empty(n, n, N, dtype=f32)  # tokens last
        _threads()
        run(_mm.coefficients_forward, x32.numpy(), p.numpy(), gate.numpy(), _np_param(bias, f32),
            _scalar(eps, f32), out.numpy(), h_pre.numpy(), h_post.numpy(), logits.numpy(), r.numpy())
        run(_sk.sinkhorn_forward, logits.numpy(), iters, _scalar(sinkhorn_eps, f32), h_res.numpy())
        ctx.save_for_backward(x, phi, gate, p, r, h_pre, h_post, logits)
        ctx.iters, ctx.sinkhorn_eps, ctx.dtypes = iters, sinkhorn_eps, (alpha.dtype, bias.dtype)
        outs = (out.to(x.dtype), h_res.permute(2, 0, 1), h_post)  # H_res (N, n, n) [t, old i, new j]
        return (*outs, x.view_as(x)) if stream_grad else outs

    @staticmethod
    def backward(ctx, g, g_res, g_post, g_x=None):
        x, phi, gate, p, r, h_pre, h_post, logits = ctx.saved_tensors
        N, n, C = x.shape
        K = p.shape[1]
        f32 = torch.float32
        g = _np(torch.zeros(N, C) if g is None else g, f32)
        g_res = torch.zeros(N, n, n, dtype=f32) if g_res is None else g_res
        g_post = _np(torch.zeros(N, n) if g_post is None else g_post, f32)
        x32 = x.detach().to(f32).contiguous()
        phi32 = phi.detach().to(f32)
        _threads()
        g_logits = torch.empty_like(logits)
        run(_sk.sinkhorn_backward, logits.numpy(), _tokens_last(g_res, f32).numpy(), ctx.iters,
            _scalar(ctx.sinkhorn_eps, f32), _scalar(_flush_below(f32), f32), g_logits.numpy())
        dz, dp = torch.empty(N, K, dtype=f32), torch.empty(N, K, dtype=f32)
        dgate, scale = torch.empty(N, 3, dtype=f32), torch.empty(N, dtype=f32)
        run(_mm.coefficients_backward, x32.numpy(), p.numpy(), gate.numpy(), r.numpy(), h_pre.numpy(), h_post.numpy(),
            g, g_post, g_logits.numpy(), dz.numpy(), dp.numpy(), dgate.numpy(), scale.numpy())
        dx = torch.mm(dp, phi32.t()).view(N, n, C)  # dP phi^T, completed in place by the last pass
        dx_in = dx.numpy() if g_x is None else _np(g_x, f32)
        run(_mm.stream_backward, x32.numpy(), g, h_pre.numpy(), scale.numpy(), dx_in, g_x is not None, dx.numpy())
        dphi = torch.mm(dp.t(), x32.view(N, n * C)).t().contiguous()  # (dP^T x)^T: MKL took 2x as long for x^T dP
        alpha_dtype, bias_dtype = ctx.dtypes
        return (dx.to(x.dtype), dphi.to(phi.dtype), dgate.sum(0).to(alpha_dtype), dz.sum(0).to(bias_dtype),
                None, None, None, None)


def cpu_mhc_mix_in(x, phi, alpha, bias, eps: float = 1e-6, sinkhorn_iters: int = 20, sinkhorn_eps: float = 1e-6,
                   stream_grad: bool = False):
    """`mhc_mix_in_reference` (sinkhorn map): x (N, n, C) -> (H_pre x (N, C) in x's dtype, H_res (N, n, n),
    H_post (N, n)), float32 inside; with `stream_grad`, a fourth output: a view of x for post +
    residual, whose gradient the backward adds into x's (None where x is not float32)."""
    if sinkhorn_iters < 0:
        raise ValueError(f"sinkhorn_iters must be >= 0, got {sinkhorn_iters}")
    return apply_mix_in(_CpuMhcMixIn, x, (phi, alpha, bias, eps, sinkhorn_iters, sinkhorn_eps), stream_grad)
