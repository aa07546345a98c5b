"""`train.init_from=PATH`: start a run from the weights of a model folder (continued pretraining).

PATH is an mhc-lm folder (an export, a `launch/convert.py` output), a Llama folder, a Hub name of
either, or a run directory (its latest checkpoint; mhc_lm/train/model_source.py). What it changes in
a run:
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

The checks made while the run config is built, and the field lists, are in
mhc_lm/train/init_from_check.py; this module is the trainer's half (model config, weights, record).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from mhc_lm.config_utils import ConfigError
from mhc_lm.train.config import model_kwargs
from mhc_lm.train.init_from_check import merged_model_config, source_model_config
from mhc_lm.train.model_source import load_source, run_model_config


def model_config(cfg):
    """The MhcLmConfig of a run with train.init_from: PATH's fields, overridden by those the run config sets."""
    path = cfg.train.init_from
    return merged_model_config(path, model_kwargs(cfg.model), source_model_config(path, run_model_config))


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
