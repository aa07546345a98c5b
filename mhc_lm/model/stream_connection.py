"""What hc and mhc share: one n-stream residual connection around a sub-layer F.

    x (B, T, n, C) ─► mix-in: coefficients + pre-mix ─► F ─► post + residual ─► x' (B, T, n, C)
                      (`_mix_in`, recomputed in backward      H_res x + H_post^T f
                       when `model.mixing_recompute` asks)

A subclass gives its parameters (`_mixing_params`), its coefficients as a function of the stream
and those parameters (`_coefficients`) and the mix-in (`_mix_in`: layer input, H_res, H_post,
and with `stream_grad` a fourth output: the stream post + residual reads, or None for x itself);
this class runs them, records H_res for the stability probe and applies post + residual (fused
kernels when asked for and available, `fused_ops.dispatch`). `MultiStreamMode` is the residual
mode both build on: n copies of the embedding in, their mean out.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .fused_ops import dispatch
from .recompute import mix_in, stream_of
from .residual_mode import ResidualMode
from .stream_ops import post_res


class StreamConnection(nn.Module):
    def __init__(self, config, sublayer_idx: int):
        super().__init__()
        self.n_streams = config.n_streams
        self.sublayer_idx = sublayer_idx
        self.eps = config.rms_norm_eps
        self.fused = config.fused_kernels
        self.cpu_kernels = getattr(config, "cpu_kernels", True)
        self.record_mixing = False  # set by the probe: keep the last H_res as M[j, i]
        self.last_mixing: torch.Tensor | None = None

    def _mixing_params(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _coefficients(self, xs: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _mix_in(self, xs: torch.Tensor, *params: torch.Tensor, stream_grad: bool = False) -> tuple:
        """(layer input, H_res, H_post), plus with `stream_grad` the stream for post + residual to read:
        a view of xs from an op whose backward also adds the gradient that view gets (one pass over
        the stream instead of autograd's sum of two), or None when the op has no such form."""
        raise NotImplementedError

    def coefficients(self, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mode's coefficients of xs (N, n, C) with the module's own parameters."""
        return self._coefficients(xs, *self._mixing_params())

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], recompute=None) -> torch.Tensor:
        """recompute: None, "sublayer" or a block's stream reference (`recompute.py`)."""
        B, T, n, C = x.shape
        xs = x.reshape(B * T, n, C)  # (N, n, C)
        layer_in, h_res, h_post, x_post = mix_in(self._mix_in, xs, self._mixing_params(), recompute)
        if self.record_mixing:
            self.last_mixing = h_res.detach().transpose(-1, -2).reshape(B, T, n, n).clone()  # M[j, i]
        f = sublayer(layer_in.view(B, T, C))  # F(layer input), (B, T, C)
        forward_fn = dispatch("post_res", self.fused, x.device, n, cpu_kernels=self.cpu_kernels)
        backward_fn = dispatch("post_res_backward", self.fused, x.device, n, cpu_kernels=self.cpu_kernels)
        out = post_res(x_post, f.reshape(B * T, C), h_res, h_post, forward_fn, backward_fn, stream_of(recompute))
        return out.view(B, T, n, C)  # H_res x + H_post^T f


class MultiStreamMode(ResidualMode):
    """n = `n_streams` residual streams: the embedding copied n times after the embedding layer,
    the streams' mean before the final norm; each sub-layer wrapped by a `StreamConnection`."""

    stream_mixing = True
    supports_post_norm = False  # norm after the mixing would rescale every stream (MhcLmConfig says more)

    @property
    def streams(self) -> int:
        return self.config.n_streams

    def expand(self, embeddings: torch.Tensor) -> torch.Tensor:
        B, T, C = embeddings.shape
        return embeddings.unsqueeze(2).expand(B, T, self.streams, C).contiguous()  # (B, T, n, C)

    def collapse(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.mean(dim=2)  # (B, T, n, C) -> (B, T, C)
