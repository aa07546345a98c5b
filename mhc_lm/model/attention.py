"""Causal grouped-query attention with RoPE and an optional KV cache, and its mask: the attention
sub-layer of block F, the same in every residual mode (imported by `modeling_mhc_lm.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache

from .configuration_mhc_lm import MhcLmConfig
from .stream_ops import rms_norm


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """RoPE tables (B, T, head_dim) computed on the fly: no buffer to lose on meta-device loading."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.float().unsqueeze(-1) * inv_freq  # (B, T, head_dim / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin (B, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


class MhcLmRMSNorm(nn.Module):
    """RMSNorm with a learned per-channel gain (the block's norms, and qk_norm's per-head norms)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class MhcLmAttention(nn.Module):
    """Causal grouped-query attention (Ainslie et al., GQA) with RoPE and an optional KV cache.

    `qk_norm`: RMSNorm over each head's query and key vectors (one gain of head_dim shared by the
    heads, as in OLMo 2 / Qwen3), applied before RoPE; bounds the attention logits' growth.
    """

    def __init__(self, config: MhcLmConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.resolved_head_dim
        self.dropout = config.attention_dropout
        C = config.hidden_size
        self.q_proj = nn.Linear(C, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(C, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(C, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, C, bias=False)
        self.o_proj.depth_scaled = True
        if config.qk_norm:
            self.q_norm = MhcLmRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = MhcLmRMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x, position_embeddings, attention_mask=None, past_key_values: Cache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if hasattr(self, "q_norm"):  # qk_norm: per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # (B, nkv, S, hd)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attention_mask,
            is_causal=attention_mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


def build_attention_mask(attention_mask, batch: int, q_len: int, past_len: int, device) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask (True = attend), or None when SDPA's is_causal suffices.

    Padding keys are masked; each query may always attend to itself so that rows of padded
    positions are never fully masked (which would give NaN).
    """
    if attention_mask is None and past_len == 0:
        return None
    if past_len == 0 and not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None  # no padding: plain causal, and SDPA keeps its fused (flash / mem-efficient) kernels
    kv_len = past_len + q_len
    q_pos = torch.arange(past_len, kv_len, device=device).unsqueeze(-1)  # (T, 1)
    k_pos = torch.arange(kv_len, device=device).unsqueeze(0)  # (1, S)
    mask = (k_pos <= q_pos).expand(batch, 1, q_len, kv_len)  # (B, 1, T, S)
    if attention_mask is not None:
        keys = attention_mask[:, -kv_len:].bool().view(batch, 1, 1, kv_len)
        mask = (mask & keys) | (k_pos == q_pos)
    return mask
