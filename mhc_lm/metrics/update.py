"""Update-to-parameter ratio per decoder layer (docs/stability.md, `update_ratio/*`).

    ratio(group) = || theta_after - theta_before || / || theta_before ||   (Frobenius over the group)

measured over one optimizer step. Groups: `layer_XX` for the parameters under
`model.layers.XX.`, `other` for the rest (embeddings, final norm, head; tied weights once),
and `global` for all of them. A healthy AdamW run sits around 1e-3 per step (a rule of thumb
for transformers at moderate learning rates); layers whose ratio collapses towards 0 have stopped
learning, layers far above it are being rewritten every step.

Measured on the fp32 master weights where the optimizer keeps them apart from the module (DeepSpeed
with bf16/fp16: the module holds 16-bit copies, on which an update below bf16 resolution, about
2^-8 relative, reads as 0 or as rounding noise). `master` maps a parameter to the tensor to
measure: the whole parameter, this rank's piece of it (1-D; the pieces of all ranks are disjoint
and `reduce` sums the squared norms over ranks), None (no piece on this rank), or NOT_MANAGED
(use the parameter itself).
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


NOT_MANAGED = object()
"""Returned by a `master` function for a parameter whose module tensor is what to measure."""


def deepspeed_fp32_piece(param: torch.nn.Parameter):
    """This rank's piece of the fp32 master of a DeepSpeed-managed parameter (1-D fragment), None
    if this rank holds none of it, or NOT_MANAGED for a parameter DeepSpeed does not manage.

    ZeRO-3 partitions (`ds_id`) and ZeRO-1/2 / BF16_Optimizer fragments (`_hp_mapping`) are
    disjoint across ranks, so sums over them, all-reduced, are sums over the whole parameter."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_get_local_fp32_param  # optional dependency: only under DeepSpeed

        return safe_get_local_fp32_param(param)
    if hasattr(param, "_hp_mapping"):
        mapping = param._hp_mapping
        return None if mapping is None else mapping.get_hp_fragment()
    return NOT_MANAGED


def _measured(p: torch.Tensor, master) -> torch.Tensor | None:
    if master is None:
        return p.detach()
    m = master(p)
    return p.detach() if m is NOT_MANAGED else (None if m is None else m.detach())


def snapshot(model: nn.Module, master=None) -> dict[str, torch.Tensor | None]:
    """Detached copies of the trainable parameters (same device and dtype), or of their fp32
    masters when `master` is given (None where this rank holds no piece of one)."""
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            m = _measured(p, master)
            out[n] = None if m is None else m.clone()
    return out


@torch.no_grad()
def update_ratios(before: dict, model: nn.Module, master=None, reduce=None) -> dict[str, float]:
    """{"update_ratio/<group>": ratio} between `before` (a `snapshot` with the same `master`) and
    the model's parameters now. `reduce(tensor)`: sum over ranks (pieces of partitioned masters);
    it must then be called on every rank, and every rank must hold the same parameter names."""
    sums: dict[str, list] = defaultdict(list)  # group -> [(|delta|^2, |theta|^2) per parameter], on device
    for name, p in model.named_parameters():
        if name not in before:
            continue
        old, now = before[name], _measured(p, master)
        if old is None or now is None or old.shape != now.shape:
            if reduce is None:
                continue
            pair = torch.zeros(2, dtype=torch.float64, device=p.device)  # a slot on every rank, same order
        else:
            old32 = old.float()
            pair = torch.stack([(now.float() - old32).pow(2).sum(), old32.pow(2).sum()]).double()
        for g in (group_of(name), "global"):
            sums[g].append(pair)
    groups = sorted(sums)
    if not groups:
        return {}
    totals = torch.stack([torch.stack(sums[g]).sum(0) for g in groups])  # (groups, 2)
    if reduce is not None:
        totals = reduce(totals)
    totals = totals.cpu().tolist()  # one host sync
    return {f"update_ratio/{g}": math.sqrt(d / s) if s > 0 else float("nan") for g, (d, s) in zip(groups, totals)}


__all__ = ["group_of", "snapshot", "update_ratios", "NOT_MANAGED", "deepspeed_fp32_piece"]
