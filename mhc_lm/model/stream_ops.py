"""Stream-mixing primitives of mHC (arXiv 2512.24880, eq. 3-9), reference implementations.

These define the meaning of the fused Triton kernels in `mhc_lm.kernels` (issue: fused
stream mixing); `dispatch(name)` returns the fused version when it is requested, the
tensors live on CUDA and the kernels are importable, else the reference here. Shapes use
N = flattened tokens, n = streams, C = hidden size.

    coefficients:  x (N, n*C) --RMSNorm--> v --phi--> (h_pre (N, n), h_post (N, n), h_res_logits (N, n, n))
    pre_mix:       layer_in[t] = sum_i h_pre[t, i] * x[t, i, :]                       (N, C)
    post_res:      out[t, j]  = sum_i h_res[t, i, j] * x[t, i, :] + h_post[t, j] * f[t, :]   (N, n, C)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mhc_coefficients_reference(
    x_flat: torch.Tensor,
    phi: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    n: int,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token mHC coefficients, all in fp32.

    x_flat: (N, n*C) residual stream, any dtype.  phi: (n*C, 2n + n*n) = [phi_pre | phi_post | phi_res].
    alpha: (3,) gates (a_pre, a_post, a_res).  bias: (2n + n*n,) = [b_pre | b_post | b_res (row-major n x n)].
    Returns H_pre = sigmoid(.), H_post = 2*sigmoid(.) (2*sigmoid applied after adding the bias),
    and the Sinkhorn logits H~_res (N, n, n) (Sinkhorn itself is a separate op).
    """
    with torch.autocast(device_type=x_flat.device.type, enabled=False):
        x32 = x_flat.float()
        v = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)  # (N, nC) RMSNorm, no weight: phi absorbs it
        proj = v @ phi.float()  # (N, 2n + n^2)
        scale = torch.cat([alpha[0].expand(n), alpha[1].expand(n), alpha[2].expand(n * n)]).float()
        pre_act = proj * scale + bias.float()  # H~ = a * (v phi) + b
        h_pre = torch.sigmoid(pre_act[:, :n])  # (N, n)
        h_post = 2.0 * torch.sigmoid(pre_act[:, n : 2 * n])  # (N, n)
        h_res_logits = pre_act[:, 2 * n :].reshape(-1, n, n)  # (N, n, n), [i, j] = old i -> new j
    return h_pre, h_post, h_res_logits


def pre_mix_reference(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """x (N, n, C), h_pre (N, n) fp32 -> (N, C) in x's dtype (accumulated in fp32).

    Autocast is off inside: einsum runs as a bmm, which bf16 autocast would otherwise round
    (the H matrices and the fp32 residual stream) to bf16 at every sub-layer."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = torch.einsum("tn,tnc->tc", h_pre.float(), x.float())  # (N, C)
    return out.to(x.dtype)


def post_res_reference(x: torch.Tensor, f_out: torch.Tensor, h_res: torch.Tensor, h_post: torch.Tensor) -> torch.Tensor:
    """x (N, n, C), f_out (N, C), h_res (N, n, n) [old i, new j], h_post (N, n) -> (N, n, C) in x's dtype."""
    with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 mixing (see pre_mix_reference)
        mixed = torch.einsum("tij,tic->tjc", h_res.float(), x.float())  # (N, n, C): new j = sum_i H[i, j] x_i
        out = mixed + h_post.float().unsqueeze(-1) * f_out.float().unsqueeze(-2)  # (N, n, C)
    return out.to(x.dtype)


def _fused(name: str):
    try:  # optional Triton kernels; absent in an exported HF folder or without triton
        import mhc_lm.kernels as kernels  # type: ignore
    except ImportError:
        return None
    return getattr(kernels, f"fused_{name}", None)


_REFERENCE = {
    "mhc_coefficients": mhc_coefficients_reference,
    "pre_mix": pre_mix_reference,
    "post_res": post_res_reference,
}


# Largest stream count each fused kernel is built for (register / shared-memory tiles of n x n
# or 2n + n^2 per token); beyond it the reference runs.
FUSED_MAX_STREAMS = {"mhc_coefficients": 8, "pre_mix": 8, "post_res": 8, "sinkhorn": 16}


def dispatch(name: str, fused: bool, device: torch.device, n_streams: int | None = None):
    """The fused kernel for `name` when asked for, on CUDA, importable and sized for `n_streams`;
    else the reference."""
    if n_streams is not None and n_streams > FUSED_MAX_STREAMS.get(name, n_streams):
        fused = False
    if fused and device.type == "cuda":
        kernel = _fused(name)
        if kernel is not None:
            return kernel
    return _REFERENCE[name]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019) computed in fp32, returned in x's dtype."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float() if weight is not None else None, eps).to(x.dtype)
