"""Update-to-parameter ratio per decoder layer (DESIGN.md section 2, "update/param ratio").

    ratio(group) = || theta_after - theta_before || / || theta_before ||   (Frobenius over the group)

measured over one optimizer step. Groups: `layer_XX` for the parameters under
`model.layers.XX.`, `other` for the rest (embeddings, final norm, head; tied weights once),
and `global` for all of them. A healthy AdamW run sits around 1e-3 per step (a rule of thumb
for transformers at moderate learning rates); layers whose ratio collapses towards 0 have stopped
learning, layers far above it are being rewritten every step.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def group_of(name: str) -> str:
    """`layer_XX` for a decoder-layer parameter, else `other`."""
    m = _LAYER.search(name)
    return f"layer_{int(m.group(1)):02d}" if m else "other"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters (same device and dtype)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def update_ratios(before: dict[str, torch.Tensor], model: nn.Module) -> dict[str, float]:
    """{"update_ratio/<group>": ratio} between `before` (a `snapshot`) and the model's parameters now."""
    delta_sq: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
    param_sq: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
    for name, p in model.named_parameters():
        old = before.get(name)
        if old is None or old.shape != p.shape:
            continue
        old32 = old.float()
        d = (p.detach().float() - old32).pow(2).sum().double().cpu()
        s = old32.pow(2).sum().double().cpu()
        for g in (group_of(name), "global"):
            delta_sq[g] += d
            param_sq[g] += s
    return {f"update_ratio/{g}": float((delta_sq[g] / param_sq[g]).sqrt()) if param_sq[g] > 0 else float("nan")
            for g in sorted(param_sq)}


__all__ = ["group_of", "snapshot", "update_ratios"]
