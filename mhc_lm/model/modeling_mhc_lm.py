"""mhc-lm: a Llama-style decoder whose residual connection is a swappable module.

The block F is the same in every mode: pre-norm grouped-query attention with RoPE
(Su et al., RoFormer) through `scaled_dot_product_attention`, then a pre-norm SwiGLU MLP
(Shazeer, GLU variants). What carries the residual stream differs:

    standard:  x + F(x)                               residual_standard.py
    hc:        n streams, learned width/depth mixing  residual_hc.py      (arXiv 2409.19606)
    mhc:       n streams, doubly stochastic H_res     residual_mhc.py     (arXiv 2512.24880)
    grid:      R x R bifurcation-merge of blocks      residual_grid.py    (Park & Han)

The mode (`residual_modes.RESIDUAL_MODES[config.residual_mode]`, interface in residual_mode.py)
expands the stream once after the embedding (hc/mhc: n copies), wraps each sub-layer, runs the
layer loop and collapses the stream once (hc/mhc: the mean) before the final norm.

Init (`_init_weights`): N(0, initializer_range) for weights, output projections (o_proj,
down_proj) scaled by 1/sqrt(2 * num_hidden_layers) (GPT-2 / OLMo depth scaling), norms at 1,
mixing parameters as their mode's paper prescribes (`ResidualMode.init_weights`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from .attention import MhcLmAttention, MhcLmRMSNorm, build_attention_mask, rotary_cos_sin
from .configuration_mhc_lm import MhcLmConfig
from .recompute import RecomputePlan
from .residual_modes import residual_mode_of, write_plugin_modes
from .stream_connection import StreamConnection
from .stream_ops import rms_norm

# transformers renamed the KV-cache argument and output field `past_key_values` -> `cache` in a
# 5.x release (generate then passes `cache=`). Accept both names on input and write outputs
# under the field name of the installed version, so caching works on either side of the rename.
_CACHE_FIELD = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def _resolve_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache as either `cache` or `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def _output_cache(outputs) -> Cache | None:
    return getattr(outputs, _CACHE_FIELD, None)


class MhcLmMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: MhcLmConfig):
        super().__init__()
        C, H = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, H, bias=False)
        self.up_proj = nn.Linear(C, H, bias=False)
        self.down_proj = nn.Linear(H, C, bias=False)
        self.down_proj.depth_scaled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MhcLmDecoderLayer(GradientCheckpointingLayer):
    """Block F (attention + MLP sub-layers), each wrapped by the residual mode.

    block_norm "pre" (default, Llama): x + F(norm(x)) per sub-layer.
    block_norm "post" (original Transformer; standard and grid only): norm(x + F(x)), the same
    two norms applied after each residual sum instead of before each sub-layer, so the identity
    path passes through every norm (Xiong et al. 2020: gradients shrink toward the input)."""

    def __init__(self, config: MhcLmConfig, layer_idx: int):
        super().__init__()
        mode = residual_mode_of(config)
        self.self_attn = MhcLmAttention(config, layer_idx)
        self.mlp = MhcLmMLP(config)
        self.input_layernorm = MhcLmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = MhcLmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn_mixing = mode.connection(2 * layer_idx)
        self.mlp_mixing = mode.connection(2 * layer_idx + 1)
        self.post_norm = config.block_norm == "post"

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None,
                mixing_recompute=None, **kwargs):
        # hidden_states: (B, T, C) for standard/grid, (B, T, n, C) for hc/mhc
        # mixing_recompute: None or one entry per sub-layer (recompute.RecomputePlan), hc/mhc only
        attn_rc, mlp_rc = mixing_recompute or (None, None)
        if self.post_norm:  # (B, T, C): norm(x + F(x)), norm(x + MLP(x))
            attend = lambda h: self.self_attn(h, position_embeddings, attention_mask, past_key_values)  # noqa: E731
            hidden_states = self.input_layernorm(self.attn_mixing(hidden_states, attend))
            return self.post_attention_layernorm(self.mlp_mixing(hidden_states, self.mlp))
        attend = lambda h: self.self_attn(self.input_layernorm(h), position_embeddings, attention_mask, past_key_values)  # noqa: E731
        hidden_states = self.attn_mixing(hidden_states, attend, attn_rc)
        hidden_states = self.mlp_mixing(hidden_states, lambda h: self.mlp(self.post_attention_layernorm(h)), mlp_rc)
        return hidden_states


class MhcLmPreTrainedModel(PreTrainedModel):
    config_class = MhcLmConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MhcLmDecoderLayer"]
    _supports_sdpa = True
    _keep_in_fp32_modules_strict = ["attn_mixing", "mlp_mixing"]  # mHC/HC coefficient path stays fp32 (fp16 and bf16)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            scale = 1.0 / math.sqrt(2 * self.config.num_hidden_layers) if getattr(module, "depth_scaled", False) else 1.0
            init.normal_(module.weight, mean=0.0, std=std * scale)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MhcLmRMSNorm):
            init.ones_(module.weight)
        else:  # the residual connections: their mode knows their init
            residual_mode_of(self.config).init_weights(module)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """HF's save, plus the source of a mode registered from outside this folder (`write_plugin_modes`)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_plugin_modes(save_directory, self.config.residual_mode)
        return out


class MhcLmModel(MhcLmPreTrainedModel):
    def __init__(self, config: MhcLmConfig):
        super().__init__(config)
        # no padding_idx: it would freeze that row, and pad_token_id (0 by default) is often a real token
        # of a tokenizer without a pad token (GPT-2's "!"); padded positions are masked out anyway
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MhcLmDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MhcLmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def mixing_modules(self) -> list[nn.Module]:
        """The n-stream (HC/mHC) residual connections in forward order (two per layer); empty otherwise."""
        return [m for layer in self.layers for m in (layer.attn_mixing, layer.mlp_mixing)
                if isinstance(m, StreamConnection)]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        past_key_values = _resolve_cache(past_key_values, cache)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if not use_cache:
            past_key_values = None
        B, T, _ = inputs_embeds.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=inputs_embeds.device).unsqueeze(0).expand(B, T)
        position_embeddings = rotary_cos_sin(position_ids, self.config.resolved_head_dim, self.config.rope_theta, inputs_embeds.dtype)
        mask = build_attention_mask(attention_mask, B, T, past_len, inputs_embeds.device)

        plan = RecomputePlan(self.config.mixing_recompute, self.config.resolved_recompute_layers) \
            if self.config.mixing_recompute != "none" else None

        def run_layer(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
            if plan is None:
                return layer(h, position_embeddings, attention_mask=mask, past_key_values=past_key_values)
            checkpointed = layer.gradient_checkpointing and layer.training  # the trainer's layer checkpointing
            recompute = plan.for_layer(layer.self_attn.layer_idx, checkpointed)
            return layer(h, position_embeddings, attention_mask=mask, past_key_values=past_key_values,
                         mixing_recompute=recompute)

        mode = residual_mode_of(self.config)
        hidden = mode.expand(inputs_embeds)  # (B, T, C) -> the mode's stream, (B, T, n, C) for hc/mhc
        hidden = mode.run_layers(self.layers, hidden, run_layer)
        hidden = self.norm(mode.collapse(hidden))  # (B, T, C)
        return BaseModelOutputWithPast(last_hidden_state=hidden, **{_CACHE_FIELD: past_key_values})


class MhcLmForCausalLM(MhcLmPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MhcLmConfig):
        super().__init__(config)
        self.model = MhcLmModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        shift_labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels`: HF convention (shifted inside); `shift_labels`: targets already aligned with logits."""
        past_key_values = _resolve_cache(past_key_values, cache)
        outputs = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None or shift_labels is not None:
            if shift_labels is not None:
                shift_labels = shift_labels.contiguous()
            loss = self.loss_function(logits, labels, self.config.vocab_size, shift_labels=shift_labels,
                                      num_items_in_batch=kwargs.get("num_items_in_batch"))
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: _output_cache(outputs)})


class MhcLmForSequenceClassification(MhcLmPreTrainedModel):
    """Classification / regression head on the last non-pad token (num_labels == 1: regression)."""

    def __init__(self, config: MhcLmConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = MhcLmModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        past_key_values = _resolve_cache(past_key_values, cache)
        outputs = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        logits = self.score(outputs.last_hidden_state)  # (B, T, num_labels)
        B, T = logits.shape[:2]
        if attention_mask is not None:
            valid = attention_mask[:, -T:].bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            valid = input_ids != self.config.pad_token_id
        else:
            valid = torch.ones(B, T, dtype=torch.bool, device=logits.device)
        positions = torch.arange(T, device=logits.device)
        last = (positions * valid).argmax(dim=-1)  # rightmost non-pad token (left or right padding)
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled, config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, **{_CACHE_FIELD: _output_cache(outputs)})


def register_auto_classes() -> None:
    """Make save_pretrained write an auto_map for every Auto class (remote code)."""
    MhcLmConfig.register_for_auto_class()
    MhcLmModel.register_for_auto_class("AutoModel")
    MhcLmForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    MhcLmForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


register_auto_classes()
