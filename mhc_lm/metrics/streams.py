"""Stream telemetry of hc / mhc: how different the n residual streams are, and where the
residual mixing H_res sits between the identity I (streams kept apart) and the uniform map J/n
(streams averaged into one). Computed by the probe (`probe.py`) from what it already records:
each decoder layer's output (B, T, n, C) and each connection's H_res (B, T, n, n).

Stream diversity of one token's n streams x_1..x_n (rows of an n x C matrix X), per layer:

    cos_dist = mean over pairs i < j of 1 - cos(x_i, x_j)         0 for identical streams
    eff_rank = exp(H(p)),  p = sigma / sum(sigma), sigma = singular values of X
                                                                    1 for identical streams,
                                                                    n for orthogonal streams of equal norm
(effective rank of Roy & Vetterli, 2007). Both are averaged over the probe batch's tokens.

Distances of a mixing matrix M (n x n) from the identity and from J/n (all entries 1/n),
normalised by ||I - J/n||_F = sqrt(n - 1) so that the two references are at distance 1 from each
other (and every permutation matrix is at distance 1 from J/n):

    d_I(M) = ||M - I||_F / sqrt(n - 1)        d_J(M) = ||M - J/n||_F / sqrt(n - 1)

Both are invariant under transposition, so the [old, new] and [new, old] conventions agree.
"Streams homogenize" shows as cos_dist -> 0 / eff_rank -> 1; "H_res stays at identity" as d_I ~ 0.
The composite over depth (M_l ... M_1 up to layer l) of a doubly stochastic H_res tends to J/n
as the streams mix; that product's d_J is logged per layer as well.

Names (per layer XX, and `mean` = mean over layers):
    streams/cos_dist/layer_XX, streams/eff_rank/layer_XX, streams/{cos_dist,eff_rank}/mean
    h_res/dist_identity/layer_XX, h_res/dist_uniform/layer_XX (mean over the layer's two connections)
    h_res/dist_identity/mean, h_res/dist_uniform/mean
    h_res/composite_dist_uniform/layer_XX (the product through layer XX), h_res/composite_dist_uniform (all layers)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .amax import composite


def pairwise_cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """x (..., n, C) -> mean over stream pairs i < j of 1 - cos(x_i, x_j), shape (...); fp64.
    A zero stream counts as orthogonal to every other."""
    n = x.shape[-2]
    if n < 2:
        return torch.zeros(x.shape[:-2], dtype=torch.float64, device=x.device)
    x = x.double()
    u = x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    cos = u @ u.transpose(-1, -2)
    i, j = torch.triu_indices(n, n, 1, device=x.device)
    return (1.0 - cos[..., i, j]).mean(dim=-1)


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """x (..., n, C) -> exp(entropy of the normalised singular values), shape (...); fp64.
    0 for an all-zero matrix (no direction at all)."""
    s = torch.linalg.svdvals(x.double())
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(torch.float64).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(torch.float64).tiny))).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def _scale(n: int) -> float:
    return math.sqrt(max(n - 1, 1))


def distance_from_identity(m: torch.Tensor) -> torch.Tensor:
    """m (..., n, n) -> ||m - I||_F / sqrt(n - 1), shape (...); fp64."""
    n = m.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=m.device)
    return torch.linalg.matrix_norm(m.double() - eye) / _scale(n)


def distance_from_uniform(m: torch.Tensor) -> torch.Tensor:
    """m (..., n, n) -> ||m - J/n||_F / sqrt(n - 1), shape (...); fp64."""
    n = m.shape[-1]
    return torch.linalg.matrix_norm(m.double() - 1.0 / n) / _scale(n)


def stream_metrics(layer_outputs: Sequence[torch.Tensor | None], mixing: Sequence[torch.Tensor] = (),
                   sublayers_per_layer: int = 2) -> dict[str, torch.Tensor]:
    """Probe entries (0-dim fp64 tensors, synced by the caller) from the decoder layers' outputs
    ((B, T, n, C) for hc / mhc; other shapes are skipped) and the recorded mixing matrices
    [M_1, ..., M_S] in forward order, each (B, T, n, n). Empty for standard / grid."""
    out: dict[str, torch.Tensor] = {}
    cos, rank = [], []
    for idx, x in enumerate(layer_outputs):
        if x is None or x.dim() != 4:
            continue
        x = x.detach()
        c, r = pairwise_cosine_distance(x).mean(), effective_rank(x).mean()
        out[f"streams/cos_dist/layer_{idx:02d}"], out[f"streams/eff_rank/layer_{idx:02d}"] = c, r
        cos.append(c)
        rank.append(r)
    if cos:
        out["streams/cos_dist/mean"] = torch.stack(cos).mean()
        out["streams/eff_rank/mean"] = torch.stack(rank).mean()
    mats = [m.detach() for m in mixing if m is not None]
    if not mats or len(mats) % sublayers_per_layer:
        return out
    d_i, d_j = [], []
    product = None
    for layer in range(len(mats) // sublayers_per_layer):
        group = mats[layer * sublayers_per_layer:(layer + 1) * sublayers_per_layer]
        di = torch.stack([distance_from_identity(m).mean() for m in group]).mean()
        dj = torch.stack([distance_from_uniform(m).mean() for m in group]).mean()
        out[f"h_res/dist_identity/layer_{layer:02d}"], out[f"h_res/dist_uniform/layer_{layer:02d}"] = di, dj
        d_i.append(di)
        d_j.append(dj)
        step = composite(group)  # fp64, this layer's M_mlp @ M_attn
        product = step if product is None else step @ product
        out[f"h_res/composite_dist_uniform/layer_{layer:02d}"] = distance_from_uniform(product).mean()
    out["h_res/dist_identity/mean"] = torch.stack(d_i).mean()
    out["h_res/dist_uniform/mean"] = torch.stack(d_j).mean()
    out["h_res/composite_dist_uniform"] = distance_from_uniform(product).mean()
    return out
