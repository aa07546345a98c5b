"""Stream-mixing primitives of mHC (arXiv 2512.24880, eq. 3-9), reference implementations.

These define the meaning of the fused Triton kernels in `mhc_lm.kernels`;
`fused_ops.dispatch(name)` returns the fused version when it is requested, the tensors live on
CUDA and the kernels are importable, else the reference here. Shapes use N = flattened tokens,
n = streams, C = hidden size.

    coefficients:  x (N, n*C) --RMSNorm--> v --phi--> (h_pre (N, n), h_post (N, n), h_res_logits)
                   h_res_logits: (N, n, n) for Sinkhorn (K = n^2 outputs), else (N, K) for the
                   H_res map to read (`h_res_maps.py`: K = n!, log2 n, n(n-1)/2)
    pre_mix:       layer_in[t] = sum_i h_pre[t, i] * x[t, i, :]                       (N, C)
    post_res:      out[t, j]  = sum_i h_res[t, i, j] * x[t, i, :] + h_post[t, j] * f[t, :]   (N, n, C)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .norm_projection import norm_projection
from .sinkhorn import DEFAULT_SINKHORN_ITERS, SINKHORN_EPS, sinkhorn_reference


def mhc_coefficients_reference(
    x_flat: torch.Tensor,
    phi: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    n: int,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token mHC coefficients, all in fp32.

    x_flat: (N, n*C) residual stream, any dtype.  phi: (n*C, 2n + K) = [phi_pre | phi_post | phi_res],
    K = n*n for the sinkhorn map, else the map's `num_outputs(n)`.
    alpha: (3,) gates (a_pre, a_post, a_res).  bias: (2n + K,) = [b_pre | b_post | b_res (sinkhorn: row-major n x n)].
    Returns H_pre = sigmoid(.), H_post = 2*sigmoid(.) (2*sigmoid applied after adding the bias),
    and the H_res logits H~_res: (N, n, n) when K = n*n (Sinkhorn, a separate op), else (N, K).

    Computed as the fused kernel does, in few ops and with tokens last: v phi = r (x phi) with
    r = rsqrt(mean x^2 + eps) (`norm_projection`: one autograd node, no (N, nC) normalised copy
    of the stream made or saved); the projection is produced as (K, N), so the
    three outputs are views of one (K, N) tensor and the logits are (n, n, N) memory, the layout
    `sinkhorn` works in.
    """
    with torch.autocast(device_type=x_flat.device.type, enabled=False):
        K = phi.shape[1]
        a = alpha.float()
        k_res = K - 2 * n  # logits of the H_res map: n^2 for sinkhorn (`h_res_maps.py`)
        gate = torch.cat([a[0:1].expand(n), a[1:2].expand(n), a[2:3].expand(k_res)])  # (K,) [a_pre | a_post | a_res]
        # r (phi^T x^T), r = rsqrt(mean x^2 + eps) per token (RMSNorm without weight: phi absorbs it), (K, N)
        proj = norm_projection(x_flat, phi, eps, tokens_last=True)
        pre_act = torch.addcmul(bias.float().view(K, 1), proj, gate.view(K, 1))  # H~ = a (v phi) + b, (K, N)
        gates = torch.sigmoid(pre_act[: 2 * n])  # (2n, N)
        h_pre = gates[:n].t()  # (N, n)
        h_post = 2.0 * gates[n:].t()  # (N, n)
        if k_res == n * n:  # sinkhorn: (N, n, n), [t, i, j] = old i -> new j
            h_res_logits = pre_act[2 * n :].view(n, n, -1).permute(2, 0, 1)
        else:  # any other H_res map: flat (N, K - 2n), the map's own layout
            h_res_logits = pre_act[2 * n :].t()
    return h_pre, h_post, h_res_logits


def mhc_mix_in_reference(x, phi, alpha, bias, eps: float = 1e-6, sinkhorn_iters: int = DEFAULT_SINKHORN_ITERS,
                         sinkhorn_eps: float = SINKHORN_EPS, stream_grad: bool = False):
    """mHC's whole mix-in with the sinkhorn map: x (N, n, C) -> (H_pre x (N, C), H_res (N, n, n)
    [old i, new j], H_post (N, n)), from `mhc_coefficients_reference`, `sinkhorn_reference` and
    `pre_mix_reference`; with `stream_grad`, None as a fourth output (post + residual reads x)."""
    N, n, C = x.shape
    h_pre, h_post, logits = mhc_coefficients_reference(x.reshape(N, n * C), phi, alpha, bias, n, eps)
    outs = pre_mix_reference(x, h_pre), sinkhorn_reference(logits, sinkhorn_iters, sinkhorn_eps), h_post
    return (*outs, None) if stream_grad else outs


def hc_coefficients_reference(x, alpha_m, alpha_r, beta, norm_weight=None, proj=None, alpha_scale=None,
                              beta_scale=None, eps: float = 1e-6):
    """HC's coefficients (`residual_hc.py`): x (N, n, C) -> A_m (N, n), A_r (N, n, n) [old i, new j],
    B (N, n), all fp32; the dynamic part when `proj` is given."""
    N, n = x.shape[0], alpha_m.shape[0]
    a_m = alpha_m.float().expand(N, n)
    a_r = alpha_r.float().expand(N, n, n)
    b = beta.float().expand(N, n)
    if proj is not None:
        with torch.autocast(device_type=x.device.type, enabled=False):
            # H_bar W = r (x (w * W)) with r = rsqrt(mean_c x^2 + eps) per token and stream: the same
            # product without the normalised (N, n, C) copy of the stream (`norm_projection`)
            weighted = norm_weight.float().unsqueeze(-1) * proj.float()  # (C, n + 2), small
            d = torch.tanh(norm_projection(x.reshape(N * n, -1), weighted, eps).view(N, n, -1))  # row i: stream i
            a_m = a_m + alpha_scale.float() * d[..., 0]
            a_r = a_r + alpha_scale.float() * d[..., 1 : n + 1]
            b = b + beta_scale.float() * d[..., n + 1]
    return a_m, a_r, b


def hc_mix_in_reference(x, alpha_m, alpha_r, beta, norm_weight, proj, alpha_scale, beta_scale, eps: float = 1e-6,
                        pre_mix=None, stream_grad: bool = False):
    """HC's dynamic mix-in: (layer input A_m^T x (N, C), A_r, B) from `hc_coefficients_reference` and
    `pre_mix` (default `pre_mix_reference`); with `stream_grad`, None as a fourth output (post +
    residual reads x itself: autograd sums x's two gradients, `StreamConnection._mix_in`)."""
    a_m, a_r, b = hc_coefficients_reference(x, alpha_m, alpha_r, beta, norm_weight, proj, alpha_scale, beta_scale, eps)
    outs = (pre_mix or pre_mix_reference)(x, a_m), a_r, b
    return (*outs, None) if stream_grad else outs


class _PreMix(torch.autograd.Function):
    """sum_i h_pre[i] x_i with an explicit backward: dx_i = h_pre[i] g (one broadcast multiply: autograd's
    bmm of an (n, 1) by a (1, C) matrix per token took 5x as long) and dh_pre[i] = <x_i, g>."""

    @staticmethod
    def forward(ctx, x, h_pre):
        ctx.save_for_backward(x, h_pre)
        # contiguous coefficients: CPU bmm loops over the batch, one copy per token, on strided ones
        return torch.bmm(h_pre.contiguous().unsqueeze(1), x).squeeze(1)  # (N, 1, n) @ (N, n, C)

    @staticmethod
    def backward(ctx, grad):
        x, h_pre = ctx.saved_tensors
        dx = dh = None
        if ctx.needs_input_grad[0]:
            dx = h_pre.unsqueeze(-1) * grad.unsqueeze(-2)  # (N, n, 1) * (N, 1, C)
        if ctx.needs_input_grad[1]:
            dh = torch.bmm(x, grad.unsqueeze(-1)).squeeze(-1)  # (N, n, C) @ (N, C, 1)
        return dx, dh


def pre_mix_reference(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """x (N, n, C), h_pre (N, n) fp32 -> (N, C) in x's dtype (accumulated in fp32).

    Autocast is off inside: the batched matmul would otherwise round the H matrices and the fp32
    residual stream to bf16 at every sub-layer."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x32 = x if x.dtype == torch.float64 else x.float()
        out = _PreMix.apply(x32, h_pre.to(x32.dtype))
    return out.to(x.dtype)


def post_res_reference(x: torch.Tensor, f_out: torch.Tensor, h_res: torch.Tensor, h_post: torch.Tensor) -> torch.Tensor:
    """x (N, n, C), f_out (N, C), h_res (N, n, n) [old i, new j], h_post (N, n) -> (N, n, C) in x's dtype.

    Differentiable by autograd; the model uses `post_res` (same forward, an explicit backward)."""
    with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 mixing (see pre_mix_reference)
        h_t = h_res.float().transpose(1, 2).contiguous()  # (N, n, n) [j, i], contiguous (see pre_mix_reference)
        mixed = torch.bmm(h_t, x.float())  # (N, n, C): new j = sum_i H[i, j] x_i
        out = torch.addcmul(mixed, h_post.float().unsqueeze(-1), f_out.float().unsqueeze(-2))  # + h_post[j] f
    return out.to(x.dtype)


def post_res_backward_reference(x, f_out, h_res, h_post, grad):
    """Gradients of `post_res_reference` for g = dL/d(out) (N, n, C), accumulated in fp32:
    dx_i = sum_j H[i, j] g_j;  df = sum_j h_post[j] g_j;  dH[i, j] = <x_i, g_j>;  dh_post[j] = <g_j, f>."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        g32, x32, f32 = grad.float(), x.float(), f_out.float()
        dx = torch.bmm(h_res.float().contiguous(), g32)  # (N, n, n) @ (N, n, C)
        df = torch.bmm(h_post.float().contiguous().unsqueeze(1), g32).squeeze(1)  # (N, C)
        dh_res = torch.bmm(x32, g32.transpose(1, 2))  # (N, n, C) @ (N, C, n) -> [t, i, j]
        dh_post = torch.bmm(g32, f32.unsqueeze(-1)).squeeze(-1)  # (N, n)
    return dx.to(x.dtype), df.to(f_out.dtype), dh_res.to(h_res.dtype), dh_post.to(h_post.dtype)


class _PostRes(torch.autograd.Function):
    """post + residual with an explicit backward. It saves the stream x, f (in F's own dtype:
    bf16 under autocast, not an fp32 copy), H_res and H_post; or, when `stream` is given (block
    recompute, `recompute.py`), no x at all: `stream.get()` rebuilds it in backward."""

    @staticmethod
    def forward(ctx, x, f_out, h_res, h_post, forward_fn, backward_fn, stream):
        ctx.backward_fn, ctx.stream = backward_fn, stream
        keep_x = stream is None or stream.stored
        ctx.save_for_backward(x if keep_x else None, f_out, h_res, h_post)
        if stream is not None:
            stream.record_step(x, f_out, h_res, h_post, forward_fn)
        return forward_fn(x, f_out, h_res, h_post)

    @staticmethod
    def backward(ctx, grad):
        x, f_out, h_res, h_post = ctx.saved_tensors
        if x is None:
            x = ctx.stream.get()
        if ctx.stream is not None:
            ctx.stream.release_step()
            ctx.stream = None
        return (*ctx.backward_fn(x, f_out, h_res, h_post, grad), None, None, None)


def post_res(x, f_out, h_res, h_post, forward_fn=post_res_reference, backward_fn=post_res_backward_reference,
             stream=None) -> torch.Tensor:
    """H_res x + H_post^T f as one autograd node: `forward_fn` / `backward_fn` are the reference
    or the fused pair from `fused_ops.dispatch("post_res")`, `dispatch("post_res_backward")`."""
    return _PostRes.apply(x, f_out, h_res, h_post, forward_fn, backward_fn, stream)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019) computed in fp32, returned in x's dtype."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float() if weight is not None else None, eps).to(x.dtype)
