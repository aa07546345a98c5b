"""Update-to-parameter ratio per decoder layer (DESIGN.md section 2, "update/param ratio").

    ratio(group) = || theta_after - theta_before || / || theta_before ||   (Frobenius over the group)

measured over one optimizer step. Groups: `layer_XX` for the parameters under
`model.layers.XX.`, `other` for the rest (embeddings, final norm, head; tied weights once),
and `global` for all of them. A healthy AdamW run sits around 1e-3 per step (a rule of thumb
for transformers at moderate learning rates); layers whose ratio collapses towards 0 have stopped
learning, layers far above it are being rewritten every step.
"""

from __future__ import annotations

import math
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
    sums: dict[str, list] = defaultdict(list)  # group -> [(|delta|^2, |theta|^2) per parameter], on device
    for name, p in model.named_parameters():
        old = before.get(name)
        if old is None or old.shape != p.shape:
            continue
        old32 = old.float()
        pair = torch.stack([(p.detach().float() - old32).pow(2).sum(), old32.pow(2).sum()]).double()
        for g in (group_of(name), "global"):
            sums[g].append(pair)
    groups = sorted(sums)
    if not groups:
        return {}
    totals = torch.stack([torch.stack(sums[g]).sum(0) for g in groups]).cpu().tolist()  # one host sync
    return {f"update_ratio/{g}": math.sqrt(d / s) if s > 0 else float("nan") for g, (d, s) in zip(groups, totals)}


__all__ = ["group_of", "snapshot", "update_ratios"]
