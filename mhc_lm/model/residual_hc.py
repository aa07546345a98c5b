"""Hyper-Connections (Zhu et al., "Hyper-Connections", arXiv 2409.19606, ICLR 2025).

n parallel residual streams H (n x C per token). Per sub-layer, with H_bar = RMSNorm(H) per stream:

    H ─┬─ A_m^T H ──► h ─► norm ─► F ─► f ─┐
       │                                    ▼
       └──────── A_r^T H ─────────────► (+ B^T f) ──► H'

    width connection  h  = A_m^T H                 (A_m in R^{n x 1})
    depth connection  H' = B^T F(h) + A_r^T H      (B in R^{1 x n}, A_r in R^{n x n})
    dynamic (DHC)     A_m += s_a * tanh(H_bar W_m);  A_r += s_a * tanh(H_bar W_r);  B += s_b * tanh(H_bar W_b)^T

Init reproduces Pre-Norm exactly (paper section 3.3): A_m = e_(k mod n) for sub-layer k, A_r = I,
B = 1, W_* = 0, so streams that start as identical copies stay identical and equal to the
pre-norm residual. A_r is unconstrained, which is what the mHC paper identifies as the source
of instability at scale. Matrices use the [old stream i, new stream j] convention of
`stream_ops.post_res_reference`: H'[j] = sum_i A_r[i, j] H[i] + B[j] f.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from .fused_ops import dispatch
from .stream_connection import MultiStreamMode, StreamConnection
from .stream_ops import hc_coefficients_reference


class HyperConnection(StreamConnection):
    """One HC residual connection around a sub-layer; x is (B, T, n, C) (`StreamConnection.forward`)."""

    def __init__(self, config, sublayer_idx: int):
        super().__init__(config, sublayer_idx)
        n, C = config.n_streams, config.hidden_size
        self.dynamic = config.hc_dynamic
        self.init_scale = 0.01
        self.static_alpha_m = nn.Parameter(torch.zeros(n))  # A_m, init e_(k mod n)
        self.static_alpha_r = nn.Parameter(torch.zeros(n, n))  # A_r [i, j], init I
        self.static_beta = nn.Parameter(torch.zeros(n))  # B, init 1
        if self.dynamic:
            self.norm_weight = nn.Parameter(torch.ones(C))
            self.dynamic_proj = nn.Parameter(torch.zeros(C, n + 2))  # [W_m | W_r | W_b], zero init
            # s_a, s_b: shape (1,), not 0-dim: DeepSpeed broadcasts parameters as byte views, which 0-dim tensors
            # cannot give ("self.dim() cannot be 0 to view Float as Byte")
            self.dynamic_alpha_scale = nn.Parameter(torch.zeros(1))
            self.dynamic_beta_scale = nn.Parameter(torch.zeros(1))

    def reset_static(self) -> dict[str, torch.Tensor]:
        """Init values (Pre-Norm equivalent), keyed by parameter name."""
        n = self.n_streams
        values = {
            "static_alpha_m": torch.nn.functional.one_hot(torch.tensor(self.sublayer_idx % n), n).float(),
            "static_alpha_r": torch.eye(n),
            "static_beta": torch.ones(n),
        }
        if self.dynamic:
            values.update(
                norm_weight=torch.ones(self.norm_weight.shape),
                dynamic_proj=torch.zeros(self.dynamic_proj.shape),
                dynamic_alpha_scale=torch.full((1,), self.init_scale),
                dynamic_beta_scale=torch.full((1,), self.init_scale),
            )
        return values

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("dynamic_alpha_scale", "dynamic_beta_scale"):  # checkpoints written with 0-dim scales
            value = state_dict.get(prefix + name)
            if value is not None and value.dim() == 0:
                state_dict[prefix + name] = value.reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _mixing_params(self) -> tuple[torch.Tensor, ...]:
        static = (self.static_alpha_m, self.static_alpha_r, self.static_beta)
        if not self.dynamic:
            return static
        return static + (self.norm_weight, self.dynamic_proj, self.dynamic_alpha_scale, self.dynamic_beta_scale)

    def _coefficients(self, x, *params):
        """x (N, n, C) -> A_m (N, n), A_r (N, n, n) [old i, new j], B (N, n), all fp32."""
        return hc_coefficients_reference(x, *params, eps=self.eps)

    def _mix_in(self, xs, *params, stream_grad: bool = False):
        """Everything before F, as a function of the stream and the parameters (what recompute re-runs):
        xs (N, n, C) -> layer input A_m^T H (N, C), A_r (N, n, n), B (N, n) (+ the stream for post +
        residual, `StreamConnection._mix_in`). The dynamic form is one op (`fused_ops`: numba on the CPU
        when `cpu_kernels`, with the fused stream gradient; else coefficients + pre-mix)."""
        pre_mix = dispatch("pre_mix", self.fused, xs.device, self.n_streams, cpu_kernels=self.cpu_kernels)
        if self.dynamic:
            mix_in = dispatch("hc_mix_in", self.fused, xs.device, self.n_streams, cpu_kernels=self.cpu_kernels)
            return mix_in(xs, *params, eps=self.eps, pre_mix=pre_mix, stream_grad=stream_grad)
        a_m, a_r, b = self._coefficients(xs, *params)
        outs = pre_mix(xs, a_m), a_r, b
        return (*outs, None) if stream_grad else outs


class HcMode(MultiStreamMode):
    """Hyper-Connections: n streams, unconstrained learned mixing (`HyperConnection`)."""

    name = "hc"
    architecture_fields = ("n_streams", "hc_dynamic")

    def connection(self, sublayer_idx: int) -> nn.Module:
        return HyperConnection(self.config, sublayer_idx)

    def init_weights(self, module: nn.Module) -> bool:
        if not isinstance(module, HyperConnection):
            return False
        for name, value in module.reset_static().items():  # Pre-Norm at init (paper section 3.3)
            init.copy_(getattr(module, name), value)
        return True
