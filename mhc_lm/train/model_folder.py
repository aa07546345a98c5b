"""Reading a model folder: an mhc-lm Hugging Face folder (config.json with model_type "mhc_lm",
safetensors), a Llama folder (model_type "llama", mapped to mhc-lm's `standard` mode below), or a Hub
name of either, fetched with huggingface_hub when online. Weights are read from safetensors only
(no pickle is loaded from a folder).

This module reads model folders alone and imports nothing of the training stack, so the run config
can check a `train.init_from` folder while it is built (mhc_lm/train/init_from_check.py). A run
directory is only recognised here (`is_run_dir`); mhc_lm/train/model_source.py reads it.

Llama: transformers' `LlamaForCausalLM` and mhc-lm's `standard` mode compute the same function with
the same parameter names, so reading one is a config mapping; every field of a Llama config.json is
decided explicitly (mapped, required to have the one value mhc-lm implements, or ignored because it
does not change the logits), and a field in none of the lists is refused rather than dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mhc_lm.config_utils import ConfigError

# Tokenizer files copied next to a converted model, as the source holds them (not re-serialised).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
                   "chat_template.json")


class ConversionError(ConfigError):
    """A folder cannot be read, or converted as asked (exit code 2 in the CLIs, one line naming why)."""


def resolve_folder(src: str | Path) -> Path:
    """A local folder as given; otherwise a Hub name, downloaded (config, safetensors, tokenizer)."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{src} is a file: pass a model folder (config.json + *.safetensors) or a run directory")
    if str(src).count("/") != 1 or str(src).startswith((".", "/", "~")):
        raise ConversionError(f"{src}: no such folder (and not a Hub name of the form owner/model)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(src), allow_patterns=["config.json", "generation_config.json",
                                                                "*.safetensors", "*.safetensors.index.json",
                                                                *TOKENIZER_FILES]))
    except Exception as err:  # offline, unknown repo, gated model, ...
        raise ConversionError(f"{src}: no such folder, and it could not be fetched from the Hub "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


def read_config_json(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} has no config.json: pass a Hugging Face model folder or a run directory")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ConversionError(f"{path} does not hold a JSON object")
    return raw


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards its index lists."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / name for name in shards]
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else \
            sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{folder} holds no *.safetensors weights (pickled .bin weights are not read: convert "
                              "them with `save_pretrained(..., safe_serialization=True)` first)")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ConversionError(f"{file}, listed in {index.name}, is missing")
        weights.update(load_file(str(file)))
    return weights


def tokenizer_dir(folder: Path) -> Path | None:
    return folder if any((folder / name).is_file() for name in TOKENIZER_FILES) else None


def is_run_dir(folder: Path) -> bool:
    """A run directory of `launch/pretrain.py` (config.yaml + checkpoints/), read by mhc_lm/train/model_source.py."""
    return (Path(folder) / "config.yaml").is_file() and (Path(folder) / "checkpoints").is_dir()


def folder_config(folder: Path):
    """(MhcLmConfig, kind) of a local mhc-lm or Llama folder, from its config.json; kind is "mhc_lm" or "llama"."""
    raw = read_config_json(folder)
    model_type = raw.get("model_type")
    if model_type == "llama":
        return mhc_config_from_llama(raw, folder), "llama"
    if model_type == "mhc_lm":
        from mhc_lm.model import MhcLmConfig

        try:
            return MhcLmConfig.from_pretrained(folder), "mhc_lm"
        except (ValueError, TypeError) as err:
            raise ConversionError(f"{folder}/config.json: {err}") from err
    raise ConversionError(f"{folder}/config.json has model_type={model_type!r}: only 'llama' (LlamaForCausalLM) "
                          "and 'mhc_lm' folders are read")


# Llama config.json -> MhcLmConfig (the reverse, for launch/convert.py to-llama, is mhc_lm/convert/llama.py).
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
