"""`train.init_from=PATH`: start a run from the weights of a model folder (continued pretraining).

PATH is an mhc-lm folder (an export, a `launch/convert.py` output), a Llama folder, or a Hub name
of either. What it changes in a run:
  - model: fields the run config leaves unset come from PATH's config; a field the run config
    sets must agree with PATH where it shapes the weights or the function (`ARCHITECTURE_FIELDS`),
    otherwise the run stops before it starts (exit 2, the field named). Settings that do not change
    the architecture (`RUN_FIELDS`: context length, kernels, recompute, dropout, init-only values)
    may be set freely.
  - weights: every parameter is loaded from PATH after the model is built (strict: nothing
    missing or extra); the optimizer, schedule and step start fresh.
  - tokenizer: data.tokenizer is PATH's (set when unset), since the embedding rows index that
    tokenizer; another folder holding the same tokenizer files is accepted (runs started from
    several folders, e.g. one per residual mode, then share one data preparation), anything else
    is refused.
  - meta.json: `init_from` records the path and a checksum of the weights loaded.
A resumed run takes its weights from its checkpoint and does not read PATH's weights again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import torch

from mhc_lm.config_utils import ConfigError

# Always compared when the run config sets them (they shape the weights or the function).
ARCHITECTURE_FIELDS = ("residual_mode", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
                       "rope_theta", "rms_norm_eps", "block_norm", "stream_collapse")
# Compared only in the residual modes they belong to.
MODE_FIELDS = {"hc": ("n_streams", "hc_dynamic"), "mhc": ("n_streams", "sinkhorn_iters", "h_res_map"),
               "grid": ("grid_size",)}
# Free to set in the run config (the run's value wins): no effect on the weights' meaning.
RUN_FIELDS = ("max_position_embeddings", "initializer_range", "mhc_init", "mhc_gate_init", "fused_kernels",
              "mixing_recompute", "mixing_recompute_layers", "attention_dropout", "pad_token_id", "bos_token_id",
              "eos_token_id")


def _folder(path: str) -> Path:
    from mhc_lm.convert.source import resolve_folder

    return resolve_folder(path)


def _source_config(path: str):
    from mhc_lm.convert.source import source_config

    return source_config(_folder(path))[0]


def tokenizer_source(path: str) -> str:
    """Where PATH's tokenizer is: the folder itself (a model folder or Hub name), run_dir/tokenizer for a run."""
    folder = Path(path).expanduser()
    if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir() and (folder / "tokenizer").is_dir():
        return str(folder / "tokenizer")
    return str(path)


def _same_tokenizer(a: str, b: str) -> bool:
    """Same place, or two local folders holding the same tokenizer (the files that define the ids)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if not (pa.exists() or pb.exists()):
        return a == b
    if pa.resolve() == pb.resolve():
        return True
    if pa.is_dir() and pb.is_dir():
        from mhc_lm.data.tokenizer import tokenizer_sha256

        return tokenizer_sha256(pa) == tokenizer_sha256(pb)
    return False


def check_run_config(cfg) -> None:
    """Called by RunConfig.__post_init__ when train.init_from is set: tokenizer and architecture checks."""
    path = cfg.train.init_from
    tokenizer = tokenizer_source(path)
    if cfg.data.tokenizer is None:
        cfg.data.tokenizer = tokenizer
        # DataConfig filled in the size of a tokenizer to train (there was none); with one the vocab is its own
        cfg.data.vocab_size = None
    elif not _same_tokenizer(cfg.data.tokenizer, tokenizer):
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer} is not the tokenizer of train.init_from={path}, whose "
                          "embedding rows index its own: leave data.tokenizer unset (it is taken from there)")
    model_config(cfg)  # raises on a mismatch, naming the field


def _differs(ours, theirs) -> bool:
    if isinstance(ours, float) or isinstance(theirs, float):
        return abs(float(ours) - float(theirs)) > 1e-12 * max(1.0, abs(float(theirs)))
    return ours != theirs


def model_config(cfg):
    """The MhcLmConfig of a run with train.init_from: PATH's fields, overridden by those the run config sets."""
    from mhc_lm.model import MhcLmConfig
    from mhc_lm.train.config import model_kwargs

    path = cfg.train.init_from
    try:
        source = _source_config(path)
    except ConfigError as err:
        raise ConfigError(f"train.init_from={path}: {err}") from err
    ours = model_kwargs(cfg.model)  # preset + inline fields the run config sets
    mode = source.residual_mode
    compared = ARCHITECTURE_FIELDS + MODE_FIELDS.get(ours.get("residual_mode", mode), ())
    for name in compared:
        if ours.get(name) is None:  # unset (or null in a preset): taken from the folder
            continue
        theirs = source.resolved_head_dim if name == "head_dim" else getattr(source, name)
        if _differs(ours[name], theirs):
            raise ConfigError(f"train.init_from={path}: model.{name}={ours[name]!r} in the run config but "
                              f"{theirs!r} in its config.json; set model.{name}={theirs!r} or leave it unset "
                              "(architecture fields are taken from train.init_from)")
    params = set(inspect.signature(MhcLmConfig.__init__).parameters) - {"self", "kwargs"}
    kwargs = {k: v for k, v in source.to_dict().items() if k in params}
    kwargs.update(ours)
    try:
        return MhcLmConfig(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model (with train.init_from={path}): {err}") from err


def weights_sha256(state_dict) -> str:
    """Checksum of a state dict's names, shapes, dtypes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_weights(model, path: str) -> dict:
    """Copy PATH's weights into `model` (strict; dtype cast to the model's); returns the meta.json record."""
    from mhc_lm.convert.source import load_source

    try:
        source = load_source(path)
    except ConfigError as err:
        raise ConfigError(f"train.init_from={path}: {err}") from err
    weights = dict(source.state_dict)
    tied = model.config.tie_word_embeddings
    if tied:
        weights.pop("lm_head.weight", None)
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ConfigError(f"train.init_from={path}: its weights do not fit the run's model (missing {missing[:4]}, "
                          f"unexpected {list(result.unexpected_keys)[:4]})")
    return {"path": str(Path(source.folder).resolve()), "kind": source.kind, "weights_sha256": weights_sha256(weights)}


def apply(trainer, model) -> dict | None:
    """Trainer hook after the model is built: load PATH's weights unless the run resumes from a checkpoint.

    Returns the meta.json record (on resume: the record of the run's first start, from its meta.json)."""
    path = trainer.config.train.init_from
    if not path:
        return None
    if trainer._resume_path() is not None:  # the checkpoint holds the weights: PATH is not read again
        meta = trainer.run_dir / "meta.json"
        try:
            record = json.loads(meta.read_text()).get("init_from")
        except (OSError, ValueError, AttributeError):
            record = None
        return record or {"path": str(path), "resumed": True}
    return load_weights(model, path)
