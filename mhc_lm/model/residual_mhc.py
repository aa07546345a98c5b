"""Manifold-Constrained Hyper-Connections (DeepSeek-AI, "mHC", arXiv 2512.24880, eq. 3-9).

    x_l (n x C) ─┬─ flatten ─► RMSNorm ─► v ─┬─ a_pre  v phi_pre  + b_pre  ─ sigmoid   ─► H_pre
                 │                            ├─ a_post v phi_post + b_post ─ 2*sigmoid ─► H_post
                 │                            └─ a_res  v phi_res  + b_res  ─ H_res map ─► H_res
                 ├─ H_pre x_l ─► norm ─► F ─► f
                 └─ H_res x_l  +  H_post^T f ─────────────────────────────────────────► x_{l+1}

    x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)

The H_res map is `config.h_res_map` (`h_res_maps.py`, docs/manifolds.md): it sets the width K of
phi_res / b_res (n^2 for the default "sinkhorn") and turns the K logits into H_res with one call.
The fused coefficient kernel is built for n^2 logits read as n x n (the maps whose
`fused_coefficients` flag is set: sinkhorn): with any other map the coefficients always run the
reference projection (`stream_ops.mhc_coefficients_reference`), fused or not; the fused pre-mix
and post + residual kernels take any H_res.

With "sinkhorn", H_res is doubly stochastic (`sinkhorn_iters` iterations), so every new stream
is a convex combination of the old ones: new j = sum_i H_res[i, j] x_l[i] (the last Sinkhorn
normalisation is over i). Products of doubly stochastic matrices stay doubly stochastic, which
bounds the composite gain over depth (the paper's fix for HC's instability).

Init ("uniform", default, as Megatron-LM and the DeepSeek-V4 port): b = 0, gates a = 0.01,
phi ~ N(0, 0.02): H_pre ~ 0.5, H_post ~ 1, H_res ~ 1/n. Streams start as identical copies of
the embedding, which any doubly stochastic H_res maps to themselves, so the network is a
Pre-Norm Transformer at init. "identity": b_res = 6I - 3, b_pre = +3 on the home stream
(k mod n) and -3 elsewhere; neither saturates any sigmoid or the Sinkhorn. Other maps: b_res =
`map.init_bias(n, mhc_init)`; maps with `zero_projection_init` (orthogonal) also start phi_res
at 0 (`phi_at_init`), so H_res = I exactly and the model is Pre-Norm at init for every map.
All coefficients (a, b, H, Sinkhorn) are fp32 regardless of autocast.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from .fused_ops import FUSED_OPS, dispatch
from .h_res_maps import get_h_res_map
from .sinkhorn import SINKHORN_EPS
from .stream_connection import MultiStreamMode, StreamConnection


class ManifoldHyperConnection(StreamConnection):
    """One mHC residual connection around a sub-layer; x is (B, T, n, C) (`StreamConnection.forward`)."""

    def __init__(self, config, sublayer_idx: int):
        super().__init__(config, sublayer_idx)
        n, C = config.n_streams, config.hidden_size
        self.sinkhorn_iters = config.sinkhorn_iters
        self.init = config.mhc_init
        self.gate_init = config.mhc_gate_init
        self.phi_std = config.initializer_range
        self.h_res_map = get_h_res_map(getattr(config, "h_res_map", "sinkhorn"))
        self.h_res_map.validate(n)
        K = self.h_res_map.num_outputs(n)  # logits of the H_res map (n^2 for sinkhorn)
        self.phi = nn.Parameter(torch.zeros(n * C, 2 * n + K))  # [phi_pre | phi_post | phi_res]
        self.alpha = nn.Parameter(torch.zeros(3))  # gates (a_pre, a_post, a_res)
        self.bias = nn.Parameter(torch.zeros(2 * n + K))  # [b_pre | b_post | b_res (sinkhorn: row-major n x n)]

    def init_bias(self) -> torch.Tensor:
        n = self.n_streams
        b_pre, b_post = torch.zeros(n), torch.zeros(n)
        if self.init == "identity":
            b_pre = torch.full((n,), -3.0)
            b_pre[self.sublayer_idx % n] = 3.0
        return torch.cat([b_pre, b_post, self.h_res_map.init_bias(n, self.init)])  # sinkhorn: 0 or 6I - 3

    def phi_at_init(self) -> torch.Tensor:
        """phi after its normal draw, with the H_res columns zeroed when the map needs the dynamic
        part exactly 0 at init (`zero_projection_init`: orthogonal, S = 0, H_res = I)."""
        phi = self.phi.detach().clone()
        if self.h_res_map.zero_projection_init:
            phi[:, 2 * self.n_streams:] = 0.0
        return phi

    def _mixing_params(self) -> tuple[torch.Tensor, ...]:
        return self.phi, self.alpha, self.bias

    def _coefficients(self, xs, phi, alpha, bias):
        """xs (N, n, C) -> H_pre (N, n), H_post (N, n), H_res (N, n, n) [old i, new j], fp32."""
        N, n, C = xs.shape
        # the fused coefficient kernel writes n x n logits: maps of another width take the reference
        fused_coefficients = self.fused and self.h_res_map.fused_coefficients
        project = dispatch("mhc_coefficients", fused_coefficients, xs.device, self.n_streams)
        h_pre, h_post, logits = project(xs.reshape(N, n * C), phi, alpha, bias, n, self.eps)
        # the H_res map: one call on the flat logits (N, K); for sinkhorn's (N, n, n) a view, no copy
        h_res = self.h_res_map(logits.reshape(N, -1), n, sinkhorn_iters=self.sinkhorn_iters, fused=self.fused,
                               cpu_kernels=self.cpu_kernels)
        return h_pre, h_post, h_res

    def _mix_in(self, xs, phi, alpha, bias, stream_grad: bool = False):
        """Everything before F, as a function of the stream and the parameters (what recompute re-runs):
        xs (N, n, C) -> layer input H_pre x (N, C), H_res (N, n, n), H_post (N, n) (+ the stream for
        post + residual with `stream_grad`, `StreamConnection._mix_in`). On the CPU with `cpu_kernels`,
        the sinkhorn map and a float32 stream: one numba op (`fused_ops`' mhc_mix_in); else the
        coefficients, the H_res map and the pre-mix, each dispatched on its own."""
        if self.h_res_map.fused_coefficients and xs.dtype == torch.float32:
            mix_in = dispatch("mhc_mix_in", self.fused, xs.device, self.n_streams, cpu_kernels=self.cpu_kernels)
            if mix_in is not FUSED_OPS["mhc_mix_in"].reference:  # only the CPU kernel: the reference is the path below
                return mix_in(xs, phi, alpha, bias, self.eps, self.sinkhorn_iters, SINKHORN_EPS, stream_grad=stream_grad)
        h_pre, h_post, h_res = self._coefficients(xs, phi, alpha, bias)
        pre_mix = dispatch("pre_mix", self.fused, xs.device, self.n_streams, cpu_kernels=self.cpu_kernels)
        outs = pre_mix(xs, h_pre), h_res, h_post
        return (*outs, None) if stream_grad else outs


class MhcMode(MultiStreamMode):
    """Manifold-constrained HC: n streams mixed by H_res from `h_res_map` (`ManifoldHyperConnection`)."""

    name = "mhc"
    uses_h_res_map = True
    architecture_fields = ("n_streams", "sinkhorn_iters", "h_res_map")

    @classmethod
    def validate(cls, config) -> None:
        get_h_res_map(config.h_res_map).validate(config.n_streams)

    def connection(self, sublayer_idx: int) -> nn.Module:
        return ManifoldHyperConnection(self.config, sublayer_idx)

    def init_weights(self, module: nn.Module) -> bool:
        if not isinstance(module, ManifoldHyperConnection):
            return False
        init.normal_(module.phi, mean=0.0, std=module.phi_std)
        if module.h_res_map.zero_projection_init:  # orthogonal map: phi_res = 0, H_res = I (docs/manifolds.md)
            init.copy_(module.phi, module.phi_at_init())
        init.constant_(module.alpha, module.gate_init)
        init.copy_(module.bias, module.init_bias())
        return True

    def extra_matmul_params(self) -> int:
        """The coefficient projection phi, nC x (2n + K), K = the map's logits, two per layer."""
        c, n = self.config, self.config.n_streams
        K = get_h_res_map(c.h_res_map).num_outputs(n)
        return c.num_hidden_layers * 2 * n * c.hidden_size * (2 * n + K)
