"""Amax Gain Magnitude of residual mixing matrices (mHC paper, arXiv 2512.24880, section 3 / Fig. 3).

Convention (docs/CONTRACTS.md): a mixing matrix M maps old streams to new ones,
x_new = M @ x_old, so M[j, i] is the weight of old stream i in new stream j.

    forward gain  = max_j |sum_i M[j, i]|   (largest |row sum|: how much a signal can grow going up)
    backward gain = max_i |sum_j M[j, i]|   (largest |column sum|: the same for gradients going down)
    inf_norm      = max_j sum_i |M[j, i]|   (induced infinity norm; equals the forward gain when M >= 0)

The composite over depth is M_L @ ... @ M_1 (forward order). A standard residual is the identity,
gain 1. For mHC every M is doubly stochastic (Sinkhorn-Knopp), so is any product, and both gains
are 1 up to the Sinkhorn tolerance; HC's unconstrained A_r lets the composite grow geometrically
(the mHC paper measures ~3000 in a 27B model).

    spectral      = ||M||_2, the largest singular value (`torch.linalg.matrix_norm(M, ord=2)`)

Amax bounds the gain of a DS product; for an orthogonal H_res (`h_res_map: orthogonal`) the
entries can be negative and Amax is not bounded, but the composite of orthogonal matrices is
orthogonal: its spectral norm is exactly 1, the gain that matters there. For DS matrices
||M||_2 <= sqrt(||M||_1 ||M||_inf) = 1, and M 1 = 1 makes it exactly 1 (up to the Sinkhorn
tolerance): it cannot tell DS maps apart, only flag a map that leaves the DS / orthogonal sets.
For HC it can grow like Amax.
"""

from __future__ import annotations

from typing import Sequence

import torch


def amax_gain(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m (..., n, n) -> (forward gain (...), backward gain (...)), per matrix."""
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"amax_gain expects (..., n, n) square matrices, got shape {tuple(m.shape)}")
    fwd = m.sum(dim=-1).abs().amax(dim=-1)  # row sums over old streams i
    bwd = m.sum(dim=-2).abs().amax(dim=-1)  # column sums over new streams j
    return fwd, bwd


def inf_norm(m: torch.Tensor) -> torch.Tensor:
    """m (..., n, n) -> max_j sum_i |M[j, i]| (...)."""
    return m.abs().sum(dim=-1).amax(dim=-1)


def composite(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """M_L @ ... @ M_1 for mats = [M_1, ..., M_L] in forward order, each (..., n, n); fp64 product."""
    if len(mats) == 0:
        raise ValueError("composite of an empty list of mixing matrices")
    out = mats[0].double()
    for m in mats[1:]:
        out = m.double() @ out  # later layers multiply on the left: x_L = M_L ... M_1 x_0
    return out


def spectral_norm(m: torch.Tensor) -> torch.Tensor:
    """m (..., n, n) -> largest singular value (...), computed in fp64."""
    return torch.linalg.matrix_norm(m.double(), ord=2)


def gain_summary(m: torch.Tensor) -> dict[str, float]:
    """Gains of m (..., n, n) reduced over all leading (token) dims: mean and max of each."""
    fwd, bwd = amax_gain(m)
    return {"fwd": fwd.float().mean().item(), "bwd": bwd.float().mean().item(),
            "fwd_max": fwd.float().max().item(), "bwd_max": bwd.float().max().item(),
            "inf_norm": inf_norm(m).float().mean().item()}


def mixing_amax_metrics(per_sublayer: Sequence[torch.Tensor], sublayers_per_layer: int = 2) -> dict[str, float]:
    """JSONL entries from the recorded mixing matrices of one probe batch.

    per_sublayer: [M_1, ..., M_S] in forward order, each (B, T, n, n); S = layers * sublayers_per_layer.
    Per layer the gain is that of the layer's whole mixing (M_mlp @ M_attn): the map the decoder
    layer applies to the residual stream; per sub-layer (`sublayer_XX`, attention = 2k, MLP =
    2k + 1) that of the single matrix H_res / A_r, the mHC paper's "single-layer" gain. Token
    reduction: mean over the probe batch's tokens; the composite also logs the max over tokens.
    `spectral/composite[_max]`: the spectral norm of the whole composite, mean (max) over tokens.
    """
    out: dict[str, float] = {}
    if not per_sublayer:
        return out
    if len(per_sublayer) % sublayers_per_layer:
        raise ValueError(f"{len(per_sublayer)} mixing matrices is not a multiple of {sublayers_per_layer} per layer")
    for idx, mat in enumerate(per_sublayer):
        g = gain_summary(mat)
        out[f"amax/fwd/sublayer_{idx:02d}"] = g["fwd"]
        out[f"amax/bwd/sublayer_{idx:02d}"] = g["bwd"]
    for layer in range(len(per_sublayer) // sublayers_per_layer):
        mats = per_sublayer[layer * sublayers_per_layer:(layer + 1) * sublayers_per_layer]
        g = gain_summary(composite(mats))
        out[f"amax/fwd/layer_{layer:02d}"] = g["fwd"]
        out[f"amax/bwd/layer_{layer:02d}"] = g["bwd"]
    total = composite(per_sublayer)
    g = gain_summary(total)
    spec = spectral_norm(total)
    out.update({"spectral/composite": spec.mean().item(), "spectral/composite_max": spec.max().item()})
    out.update({"amax/fwd/composite": g["fwd"], "amax/bwd/composite": g["bwd"],
                "amax/fwd/composite_max": g["fwd_max"], "amax/bwd/composite_max": g["bwd_max"],
                "amax/inf_norm/composite": g["inf_norm"]})
    return out
