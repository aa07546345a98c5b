"""Llama in, Llama out: transformers' `LlamaForCausalLM` <-> mhc-lm's `standard` mode.

The two compute the same function with the same parameter names (`model.embed_tokens`,
`model.layers.i.self_attn.{q,k,v,o}_proj`, `model.layers.i.mlp.{gate,up,down}_proj`,
`input_layernorm`, `post_attention_layernorm`, `model.norm`, `lm_head`): pre-norm RMSNorm blocks,
GQA with rotate-half RoPE, SwiGLU, no biases. Conversion is therefore a config mapping plus a
check; every field of a Llama config.json is decided explicitly below (mapped, required to have the
one value mhc-lm implements, or ignored because it does not change the logits), and a field in
none of the lists is refused rather than dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mhc_lm.convert.source import (ConversionError, build_model, check_target, load_source, resolve_folder,
                                   write_folder)

# Llama config.json key -> (MhcLmConfig field, value when the key is absent: LlamaConfig's default).
MAPPED = {
    "vocab_size": ("vocab_size", 32000),
    "hidden_size": ("hidden_size", 4096),
    "intermediate_size": ("intermediate_size", 11008),
    "num_hidden_layers": ("num_hidden_layers", 32),
    "num_attention_heads": ("num_attention_heads", 32),
    "num_key_value_heads": ("num_key_value_heads", None),  # None = num_attention_heads (MHA)
    "head_dim": ("head_dim", None),  # None = hidden_size / num_attention_heads
    "max_position_embeddings": ("max_position_embeddings", 2048),
    "rms_norm_eps": ("rms_norm_eps", 1e-6),
    "tie_word_embeddings": ("tie_word_embeddings", False),
    "initializer_range": ("initializer_range", 0.02),
    "attention_dropout": ("attention_dropout", 0.0),
    "use_cache": ("use_cache", True),
    "pad_token_id": ("pad_token_id", None),
    "bos_token_id": ("bos_token_id", 1),
    "eos_token_id": ("eos_token_id", 2),
}
# Keys whose only accepted values are the ones mhc-lm's block implements.
REQUIRED = {
    "hidden_act": ("silu", "swish"),  # SwiGLU's gate; transformers maps both names to SiLU
    "attention_bias": (False,),
    "mlp_bias": (False,),
    "model_type": ("llama",),
    "architectures": (None, ["LlamaForCausalLM"]),
}
# RoPE: rope_theta (+ rope_scaling, transformers 4) or rope_parameters (transformers 5); only the
# default (unscaled) rotary embedding exists in mhc-lm.
ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters")
# Keys that do not change the logits: bookkeeping of transformers, the storage dtype (the weights
# keep theirs), pretraining_tp (transformers 4 split the same matmuls into slices for exactness
# with Meta's tensor-parallel checkpoints), and generation defaults of old configs (generation
# settings are read from generation_config.json, which is copied along).
IGNORED = {
    "transformers_version", "_name_or_path", "dtype", "torch_dtype", "pretraining_tp", "output_hidden_states",
    "output_attentions", "return_dict", "use_return_dict", "chunk_size_feed_forward", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "tokenizer_class", "torchscript", "tf_legacy_loss", "use_bfloat16",
    "pruned_heads", "finetuning_task", "task_specific_params", "prefix", "sep_token_id", "decoder_start_token_id",
    "is_decoder", "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
}


def _check_rope_type(kind, field: str) -> None:
    if kind not in (None, "default"):
        raise ConversionError(f"{field}: rope type {kind!r} is not implemented in mhc-lm (only the default, "
                              "unscaled RoPE): converting would change the model's function")


def _rope_theta(raw: dict) -> float:
    """rope_theta of either config layout; every other RoPE setting must be the default."""
    theta = raw.get("rope_theta")
    scaling = raw.get("rope_scaling")  # transformers 4: None or {"rope_type" | "type": ..., factor, ...}
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        _check_rope_type(kind, "rope_scaling")
        extra = sorted(set(scaling) - {"rope_type", "type"}) if isinstance(scaling, dict) else []
        if extra:
            raise ConversionError(f"rope_scaling has {extra}: only the default RoPE converts")
    params = raw.get("rope_parameters")  # transformers 5: {"rope_type": ..., "rope_theta": ..., ...}
    if params is not None:
        if not isinstance(params, dict):
            raise ConversionError(f"rope_parameters={params!r} is not an object")
        _check_rope_type(params.get("rope_type", params.get("type")), "rope_parameters")
        extra = sorted(set(params) - {"rope_type", "type", "rope_theta"})
        if extra:
            raise ConversionError(f"rope_parameters has {extra}: mhc-lm implements only the default RoPE "
                                  "(rope_theta), nothing else is converted")
        theta = params.get("rope_theta", theta)
    return float(10000.0 if theta is None else theta)


def mhc_config_kwargs_from_llama(raw: dict) -> dict:
    """MhcLmConfig kwargs of a Llama config.json dict; ConversionError naming the first field it cannot represent."""
    for key, allowed in REQUIRED.items():
        value = raw.get(key, allowed[0])
        if value not in allowed:
            raise ConversionError(f"config field {key}={value!r} cannot be represented in mhc-lm (supported: "
                                  f"{' or '.join(map(repr, allowed))})")
    unknown = sorted(set(raw) - set(MAPPED) - set(REQUIRED) - set(ROPE_KEYS) - IGNORED)
    if unknown:
        raise ConversionError(f"config field {unknown[0]}={raw[unknown[0]]!r} is not a Llama field the converter "
                              "knows; refusing rather than dropping it")
    kwargs = {field: raw.get(key, default) for key, (field, default) in MAPPED.items()}
    kwargs["rope_theta"] = _rope_theta(raw)
    if kwargs["num_key_value_heads"] is None:
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    kwargs.update(residual_mode="standard", block_norm="pre")
    return kwargs


def mhc_config_from_llama(raw: dict, folder: Path | None = None):
    from mhc_lm.model import MhcLmConfig

    try:
        return MhcLmConfig(**mhc_config_kwargs_from_llama(raw))
    except (ValueError, TypeError) as err:
        if isinstance(err, ConversionError):
            raise
        raise ConversionError(f"{folder or 'Llama'} config.json: {err}") from err


def llama_config_from_mhc(config, dtype: torch.dtype | None = None):
    """LlamaConfig computing what an mhc-lm config computes; ConversionError for hc / mhc / grid / post-norm."""
    from transformers import LlamaConfig

    mode = config.residual_mode
    if mode in ("hc", "mhc"):
        raise ConversionError(f"residual_mode={mode!r} carries {config.n_streams} residual streams mixed by learned "
                              "matrices, which LlamaForCausalLM has no place for: only standard models convert to "
                              "Llama")
    if mode == "grid" and config.grid_size != 1:
        raise ConversionError(f"residual_mode='grid' with grid_size={config.grid_size} averages two paths at every "
                              "merge node, which LlamaForCausalLM cannot express: only standard models (or grid_size "
                              "1, the same sequential stack) convert to Llama")
    if config.block_norm != "pre":
        raise ConversionError(f"block_norm={config.block_norm!r}: LlamaForCausalLM is pre-norm only")
    head_dim = config.resolved_head_dim
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=head_dim, hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        tie_word_embeddings=bool(config.tie_word_embeddings), initializer_range=config.initializer_range,
        attention_dropout=config.attention_dropout, attention_bias=False, mlp_bias=False,
        use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, architectures=["LlamaForCausalLM"], dtype=dtype,
    )


def from_llama(src: str | Path, out: str | Path) -> Path:
    """A Llama folder (or Hub name) -> an mhc-lm `standard` folder (remote code + copied tokenizer)."""
    folder = resolve_folder(src)
    out_dir = check_target(out, folder)
    source = load_source(folder)
    if source.kind != "llama":
        raise ConversionError(f"{src} is not a Llama folder (it is a {source.kind} model): from-llama reads "
                              "config.json with model_type 'llama'")
    model = build_model(source.config, source.state_dict, str(src))
    return write_folder(out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True),
                        source.tokenizer_dir, (folder / "generation_config.json",))


def to_llama(src: str | Path, out: str | Path) -> Path:
    """A standard-mode run directory or mhc-lm folder -> a native LlamaForCausalLM folder (no remote code)."""
    from safetensors.torch import save_file

    folder = resolve_folder(src)
    out_dir = check_target(out, folder)
    source = load_source(folder)
    if source.kind == "llama":
        raise ConversionError(f"{src} is already a Llama folder")
    weights = dict(source.state_dict)
    dtype = next(iter(weights.values())).dtype
    llama_config = llama_config_from_mhc(source.config, dtype)
    build_model(source.config, weights, str(src))  # same checks of names and shapes as every conversion
    if llama_config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # transformers ties it back from the embedding
    weights = {k: v.detach().contiguous().clone() for k, v in weights.items()}

    def write(tmp: Path) -> None:
        llama_config.save_pretrained(tmp)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        from transformers import GenerationConfig

        GenerationConfig.from_model_config(llama_config).save_pretrained(tmp)

    return write_folder(out_dir, write, source.tokenizer_dir)
