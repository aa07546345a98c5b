"""RMS-normalised projection, the input of the hc and mhc coefficients, as one autograd node.

    z = rsqrt(mean(x^2) + eps) * (x W)        x (M, D), W (D, K), K small (n + 2 or 2n + n^2)

Both modes normalise the stream before projecting it; `r (x W)` equals `RMSNorm(x) W` without
the normalised (M, D) copy. Autograd through the chain norm -> rsqrt -> mm -> mul spends several
full passes over x in backward (the norm's backward alone is four, plus adding the two gradients
of x) and was 4/5 of the coefficients' cost on CPU. The explicit backward here is two mm and one
pass over x:

    p = x W,  dp = dz * r,  dr = sum_k dz * p
    dW = x^T dp
    dx = dp W^T - (dr * r^3 / D) x           (d r / d x = -r^3 x / D)

`tokens_last=True` returns z transposed, (K, M), computed as W^T x^T (mHC reads its logits in
that layout, `stream_ops.mhc_coefficients_reference`). Everything is fp32 (fp64 if given); x may
be any dtype and gets its gradient in its own dtype.
"""

from __future__ import annotations

import torch


def _compute(t: torch.Tensor) -> torch.Tensor:
    """fp32, or fp64 when given (gradcheck)."""
    return t if t.dtype == torch.float64 else t.float()


def _inverse_rms(x32: torch.Tensor, eps: float) -> torch.Tensor:
    """(M, D) -> (M,) rsqrt(mean x^2 + eps), one pass (a norm, not pow + mean)."""
    return torch.rsqrt(torch.linalg.vector_norm(x32, dim=-1).square() / x32.shape[-1] + eps)


class _NormProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, tokens_last: bool):
        x32, w32 = _compute(x), _compute(weight)
        r = _inverse_rms(x32, eps)  # (M,)
        if tokens_last:
            p = torch.mm(w32.t(), x32.t())  # (K, M)
            z = p * r
        else:
            p = torch.mm(x32, w32)  # (M, K)
            z = p * r.unsqueeze(-1)
        ctx.save_for_backward(x, weight, r, p)
        ctx.tokens_last = tokens_last
        return z

    @staticmethod
    def backward(ctx, dz):
        x, weight, r, p = ctx.saved_tensors
        x32, w32 = _compute(x), _compute(weight)
        if ctx.tokens_last:  # back to (M, K)
            dz, p = dz.t(), p.t()
        rr = r.unsqueeze(-1)
        dp = dz * rr  # (M, K)
        dr = (dz * p).sum(-1, keepdim=True)  # (M, 1)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            scale = dr * rr.pow(3) * (-1.0 / x32.shape[-1])  # (M, 1)
            # the mm writes a fresh (M, D) buffer, the norm term is added into it: one allocation
            dx = torch.mm(dp, w32.t()).addcmul_(x32, scale).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dw = torch.mm(dp.t(), x32).t().to(weight.dtype)  # (dp^T x)^T: on CPU, MKL ran x^T dp 2-3x slower
        return dx, dw, None, None


def norm_projection(x: torch.Tensor, weight: torch.Tensor, eps: float, tokens_last: bool = False) -> torch.Tensor:
    """rsqrt(mean(x^2, -1) + eps) * (x @ weight) in fp32, autocast off: x (M, D), weight (D, K) ->
    (M, K), or (K, M) with `tokens_last`."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _NormProjection.apply(x, weight, eps, tokens_last)
