"""Bifurcation-merge grid (Park & Han, "Gradient Flow Analysis of Ultra-Deep Residual Networks
and a Grid-Based Bifurcation-Merge Paradigm").

Blocks (each a whole pre-norm residual block) are laid on an R x R grid; the module is repeated
K = num_hidden_layers / R^2 times, so depth, parameters and FLOPs equal a sequential stack.

    in ─► (0,0) ──► (0,1) ──► (0,2)        node (i, j): x_ij = F_ij(z_ij)
            │         │         │          z_00 = module input
            ▼         ▼         ▼          z_ij = single parent on the first row / column (bifurcation)
          (1,0) ──► (1,1) ──► (1,2)        z_ij = (x_(i-1)j + x_i(j-1)) / 2 otherwise (merge: the mean
            │         │         │                 keeps both paths equal, backward halves each gradient)
            ▼         ▼         ▼          out = x_(R-1)(R-1)
          (2,0) ──► (2,1) ──► (2,2) ─► out

Node (k, i, j) is layer k*R*R + i*R + j. R = 1 is exactly the standard sequential stack. Nodes on
one anti-diagonal (i + j = d) are independent (a parallel fast path could batch them).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .residual_standard import StandardMode


def grid_forward(
    layers: Sequence[torch.nn.Module],
    x: torch.Tensor,
    grid_size: int,
    run_layer: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run `layers` as K stacked R x R bifurcation-merge modules; x is (B, T, C)."""
    R = grid_size
    per_module = R * R
    for start in range(0, len(layers), per_module):
        row_above: list[torch.Tensor | None] = [None] * R  # x_(i-1, j) for the current row i
        for i in range(R):
            left: torch.Tensor | None = None  # x_(i, j-1)
            for j in range(R):
                up = row_above[j]
                if i == 0 and j == 0:
                    z = x
                elif up is not None and left is not None:
                    z = (up + left) * 0.5  # merge node
                else:
                    z = up if up is not None else left  # bifurcation: single parent
                left = run_layer(layers[start + i * R + j], z)
                row_above[j] = left
        x = row_above[R - 1]  # x_(R-1, R-1)
    return x


class GridMode(StandardMode):
    """Ordinary residual blocks (`StandardResidual`) laid on K R x R grids, R = `grid_size`."""

    name = "grid"
    architecture_fields = ("grid_size",)

    @classmethod
    def validate(cls, config) -> None:
        R = config.grid_size
        if not isinstance(R, int) or R < 1:
            raise ValueError(f"grid_size must be an integer >= 1, got {R!r}")
        if config.num_hidden_layers % (R**2) != 0:
            raise ValueError(f"num_hidden_layers ({config.num_hidden_layers}) must be divisible by grid_size**2 "
                             f"({R**2}) in grid mode")

    def run_layers(self, layers, hidden, run_layer):
        return grid_forward(layers, hidden, self.config.grid_size, run_layer)
