"""Standard pre-norm residual (Llama): x_{l+1} = x_l + F_l(x_l).

    x ──┬──────────────► (+) ──► x_{l+1}
        └─► norm ─► F ───┘

`F` (the sub-layer passed in) already contains its pre-norm.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .residual_mode import ResidualMode


class StandardResidual(nn.Module):
    """x (B, T, C) -> x + sublayer(x). Holds no parameters."""

    def __init__(self, config, sublayer_idx: int):
        super().__init__()
        self.sublayer_idx = sublayer_idx

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], recompute=None) -> torch.Tensor:
        return x + sublayer(x)  # recompute: always None here (mixing_recompute is for hc / mhc)


class StandardMode(ResidualMode):
    """One stream, x + F(x) per sub-layer, layers in sequence."""

    name = "standard"

    def connection(self, sublayer_idx: int) -> nn.Module:
        return StandardResidual(self.config, sublayer_idx)
