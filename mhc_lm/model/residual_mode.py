"""The interface every residual mode implements (`residual_modes.py` holds the registry).

A mode decides what carries the residual stream between the embedding and the final norm:

    embeddings (B, T, C) ─► expand ─► run_layers(layers, ·) ─► collapse ─► (B, T, C) ─► final norm
                                      each layer: connection(attn) then connection(mlp)

    validate(config)   the mode's own config rules (called by MhcLmConfig, after the common ones)
    streams            residual streams carried (1 unless the mode widens the stream)
    connection(k)      the nn.Module around sub-layer k: forward(x, sublayer, recompute=None)
    expand / collapse  once after the embedding / once before the final norm
    run_layers         the layer loop (sequential by default; grid lays the layers on a grid)
    init_weights(m)    init of the mode's own modules (called from `_init_weights`; True if handled)

Capability flags say which other settings mean something for the mode, so the config checks
them without naming modes: `stream_mixing` (hc/mhc: n mixed streams, `mixing_recompute`),
`uses_h_res_map` (mhc: `h_res_map`), `supports_post_norm` (`block_norm: post`).

A mode is constructed from the config, `mode = ModeClass(config)`; it holds no tensors, so it is
cheap to build wherever the config is at hand.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


class ResidualMode:
    """Base class of the residual modes; the defaults are the plain single-stream ones."""

    name: str = ""
    """The `residual_mode` value that selects the mode (the registry key)."""
    stream_mixing: bool = False
    """Carries n_streams mixed streams; `mixing_recompute` applies (hc, mhc)."""
    uses_h_res_map: bool = False
    """Builds H_res with `h_res_map` (mhc); other modes accept only the default map."""
    supports_post_norm: bool = True
    """`block_norm: post` is defined for the mode."""
    architecture_fields: tuple[str, ...] = ()
    """Config fields, besides the common ones, that shape this mode's weights or function (two
    configs that differ in one of them are different models: `train.init_from` compares them)."""

    def __init__(self, config):
        self.config = config

    @classmethod
    def validate(cls, config) -> None:
        """Raise ValueError when `config` is not valid for this mode (the common rules ran already)."""

    @property
    def streams(self) -> int:
        """Residual streams actually carried."""
        return 1

    def connection(self, sublayer_idx: int) -> nn.Module:
        """The residual connection around sub-layer `sublayer_idx` (2 per layer: attention, MLP)."""
        raise NotImplementedError

    def expand(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, C) embeddings -> the residual stream the layers take."""
        return embeddings

    def collapse(self, hidden: torch.Tensor) -> torch.Tensor:
        """The stream after the last layer -> (B, T, C) for the final norm."""
        return hidden

    def run_layers(self, layers: Sequence[nn.Module], hidden: torch.Tensor,
                   run_layer: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Apply the decoder layers to the stream; `run_layer(layer, h)` runs one layer."""
        for layer in layers:
            hidden = run_layer(layer, hidden)
        return hidden

    def init_weights(self, module: nn.Module) -> bool:
        """Initialise `module` if it is one of this mode's own modules; True when it was."""
        return False

    def extra_matmul_params(self) -> int:
        """Per-token multiply-add weights of the mode's mixing over all layers, for FLOP counts
        (6 FLOPs per weight per token in training, as for the block's linear layers); 0 by default."""
        return 0
