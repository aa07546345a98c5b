"""HC's dynamic mix-in on the CPU as one torch op (`hc_mix_in.py`'s loops inside): same signature,
semantics and outputs as `mhc_lm.model.stream_ops.hc_mix_in_reference`, fp32 inside.

With `stream_grad=True` (a float32 stream) the op also returns a view of x for post + residual to
read, and its backward adds the gradient that view gets into x's own in the same pass over the
stream: the sum autograd would otherwise make of x's two consumers, one read and write of the
stream fewer, with the same bits (`hc_mix_in.py`).
"""

from __future__ import annotations

import numpy as np
import torch

from . import hc_mix_in as _hc
from .cache_lock import run
from .ops import _np, _np_param, _scalar, _threads, apply_mix_in


class _CpuHcMixIn(torch.autograd.Function):
    """Saves x, the parameters, W^T, P, r, tanh(.) and A_m."""

    @staticmethod
    def forward(ctx, x, alpha_m, alpha_r, beta, norm_weight, proj, alpha_scale, beta_scale, eps, stream_grad):
        N, n, C = x.shape
        f32 = torch.float32
        x32 = x.detach().to(f32).contiguous()
        w = norm_weight.detach().to(f32).unsqueeze(-1) * proj.detach().to(f32)  # (C, K)
        K = w.shape[1]
        wt = w.t().contiguous()  # (K, C)
        p = torch.empty(N, n, K, dtype=f32)  # P = x W, made by the kernel
        out = torch.empty(N, C, dtype=f32)
        a_m, b, r = (torch.empty(N, n, dtype=f32) for _ in range(3))
        a_r = torch.empty(N, n, n, dtype=f32)
        d = torch.empty(N, n, K, dtype=f32)
        sa, sb = alpha_scale.detach().to(f32).item(), beta_scale.detach().to(f32).item()
        _threads()
        run(_hc.hc_projection_forward, x32.numpy(), wt.numpy(), _scalar(eps, f32), r.numpy(), p.numpy(), d.numpy())
        np.tanh(d.numpy(), out=d.numpy())  # numpy's SIMD tanh: libm's scalar one was 0.3 of the 0.5 ms forward
        run(_hc.hc_mix_in_forward, x32.numpy(), d.numpy(), _np_param(alpha_m, f32), _np_param(alpha_r, f32),
            _np_param(beta, f32), _scalar(sa, f32), _scalar(sb, f32), out.numpy(), a_m.numpy(), a_r.numpy(),
            b.numpy())
        ctx.save_for_backward(x, norm_weight, proj, wt, p, a_m, r, d)
        ctx.scales, ctx.x_dtype = (sa, sb), x.dtype
        outs = (out.to(x.dtype), a_r, b)
        return (*outs, x.view_as(x)) if stream_grad else outs

    @staticmethod
    def backward(ctx, g, g_ar, g_b, g_x=None):
        x, norm_weight, proj, wt, p, a_m, r, d = ctx.saved_tensors
        N, n, C = x.shape
        f32 = torch.float32
        sa, sb = ctx.scales
        g = torch.zeros(N, C, dtype=f32) if g is None else g
        g_ar = torch.zeros(N, n, n, dtype=f32) if g_ar is None else g_ar
        g_b = torch.zeros(N, n, dtype=f32) if g_b is None else g_b
        x32 = x.detach().to(f32).contiguous()
        dx, dp = torch.empty(N, n, C, dtype=f32), torch.empty_like(p)
        dh_pre, dsa, dsb = torch.empty(N, n, dtype=f32), torch.empty(N, dtype=f32), torch.empty(N, dtype=f32)
        dx_in = dx if g_x is None else g_x.detach().to(f32).contiguous()
        _threads()
        run(_hc.hc_mix_in_backward, x32.numpy(), p.numpy(), wt.numpy(), a_m.numpy(), r.numpy(), d.numpy(),
            _scalar(sa, f32), _scalar(sb, f32), _np(g, f32), _np(g_ar, f32), _np(g_b, f32), dx_in.numpy(),
            g_x is not None, dx.numpy(), dp.numpy(), dh_pre.numpy(), dsa.numpy(), dsb.numpy())
        dw = torch.mm(dp.view(N * n, -1).t(), x32.view(N * n, C)).t()  # (dP^T x)^T, (C, K): x^T dP took MKL 3x as long
        d_norm_weight = (dw * proj.to(f32)).sum(-1)
        d_proj = dw * norm_weight.to(f32).unsqueeze(-1)
        return (dx.to(ctx.x_dtype), dh_pre.sum(0), g_ar.to(f32).sum(0), g_b.to(f32).sum(0),
                d_norm_weight.to(norm_weight.dtype), d_proj.to(proj.dtype), dsa.sum().view(1), dsb.sum().view(1),
                None, None)


def cpu_hc_mix_in(x, alpha_m, alpha_r, beta, norm_weight, proj, alpha_scale, beta_scale, eps: float = 1e-6,
                  pre_mix=None, stream_grad: bool = False):
    """`hc_mix_in_reference`: (A_m^T x (N, C) in x's dtype, A_r (N, n, n), B (N, n)), fp32 inside;
    `pre_mix` is accepted for the signature and unused (the pre-mix is part of the pass). With
    `stream_grad` a fourth output: the stream for post + residual to read (a view of x, whose
    gradient this op's backward adds into x's), or None where x is not float32 (read x itself)."""
    return apply_mix_in(_CpuHcMixIn, x, (alpha_m, alpha_r, beta, norm_weight, proj, alpha_scale, beta_scale, eps),
                        stream_grad)
