"""What hc and mhc share: one n-stream residual connection around a sub-layer F.

    x (B, T, n, C) ─► mix-in: coefficients + pre-mix ─► F ─► post + residual ─► x' (B, T, n, C)
                      (`_mix_in`, recomputed in backward      H_res x + H_post^T f
                       when `model.mixing_recompute` asks)

A subclass gives its parameters (`_mixing_params`), its coefficients as a function of the stream
and those parameters (`_coefficients`) and the mix-in (`_mix_in`: layer input, H_res, H_post);
this class runs them, records H_res for the stability probe and applies post + residual (fused
kernels when asked for and available, `stream_ops.dispatch`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .recompute import mix_in, stream_of
from .stream_ops import dispatch, post_res


class StreamConnection(nn.Module):
    def __init__(self, config, sublayer_idx: int):
        super().__init__()
        self.n_streams = config.n_streams
        self.sublayer_idx = sublayer_idx
        self.eps = config.rms_norm_eps
        self.fused = config.fused_kernels
        self.record_mixing = False  # set by the probe: keep the last H_res as M[j, i]
        self.last_mixing: torch.Tensor | None = None

    def _mixing_params(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _coefficients(self, xs: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _mix_in(self, xs: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def coefficients(self, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mode's coefficients of xs (N, n, C) with the module's own parameters."""
        return self._coefficients(xs, *self._mixing_params())

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], recompute=None) -> torch.Tensor:
        """recompute: None, "sublayer" or a block's stream reference (`recompute.py`)."""
        B, T, n, C = x.shape
        xs = x.reshape(B * T, n, C)  # (N, n, C)
        layer_in, h_res, h_post = mix_in(self._mix_in, xs, self._mixing_params(), recompute)
        if self.record_mixing:
            self.last_mixing = h_res.detach().transpose(-1, -2).reshape(B, T, n, n).clone()  # M[j, i]
        f = sublayer(layer_in.view(B, T, C))  # F(layer input), (B, T, C)
        forward_fn = dispatch("post_res", self.fused, x.device, n)
        backward_fn = dispatch("post_res_backward", self.fused, x.device, n)
        out = post_res(xs, f.reshape(B * T, C), h_res, h_post, forward_fn, backward_fn, stream_of(recompute))
        return out.view(B, T, n, C)  # H_res x + H_post^T f
