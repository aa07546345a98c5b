"""Llama in, Llama out: transformers' `LlamaForCausalLM` <-> mhc-lm's `standard` mode.

The two compute the same function with the same parameter names (`model.embed_tokens`,
`model.layers.i.self_attn.{q,k,v,o}_proj`, `model.layers.i.mlp.{gate,up,down}_proj`,
`input_layernorm`, `post_attention_layernorm`, `model.norm`, `lm_head`): pre-norm RMSNorm blocks,
GQA with rotate-half RoPE, SwiGLU, no biases. Conversion is therefore a config mapping plus a
check. Llama in: every field of a Llama config.json is decided explicitly where a Llama folder is
read, mhc_lm/train/model_folder.py (mapped, required to have the one value mhc-lm implements, or
ignored because it does not change the logits), and a field in none of the lists is refused rather
than dropped. Llama out: `llama_config_from_mhc` below.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mhc_lm.convert.output import build_model, check_target, write_folder
from mhc_lm.train.model_folder import ConversionError, resolve_folder
from mhc_lm.train.model_source import load_source


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
    if getattr(config, "qk_norm", False):
        raise ConversionError("qk_norm=True: LlamaForCausalLM has no query/key norms (Olmo2 and Qwen3 do; only "
                              "models without qk_norm convert to Llama)")
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
