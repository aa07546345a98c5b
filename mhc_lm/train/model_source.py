"""A model to start from or to convert, read as an mhc-lm model: its config and its weights.

A source is one of:
  - a run directory of `launch/pretrain.py` (config.yaml + checkpoints/): its latest checkpoint,
    which wins over the export published at its top;
  - an mhc-lm or Llama Hugging Face folder, or a Hub name of either (mhc_lm/train/model_folder.py).
Read by `train.init_from` (mhc_lm/train/init_from.py) and by `launch/convert.py` (mhc_lm/convert/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mhc_lm.train.model_folder import (ConversionError, folder_config, is_run_dir, load_safetensors, resolve_folder,
                                       tokenizer_dir)


@dataclass
class Source:
    config: object
    """The source as an MhcLmConfig (a Llama source already mapped)."""
    state_dict: dict[str, torch.Tensor]
    """Weights under mhc-lm (= Llama) parameter names."""
    tokenizer_dir: Path | None
    """Folder holding the tokenizer files, or None."""
    folder: Path
    """The folder the source was read from (a run directory for runs)."""
    kind: str
    """"run", "mhc_lm" or "llama"."""


def run_model_config(run_dir: Path):
    """The MhcLmConfig of a run directory, from its config.yaml."""
    from mhc_lm.train.config import build_model_config, load_run_config

    return build_model_config(load_run_config(Path(run_dir) / "config.yaml").model)


def source_config(folder: Path):
    """(MhcLmConfig, kind) of a local run directory or model folder, from its config alone."""
    folder = Path(folder)
    if is_run_dir(folder):
        return run_model_config(folder), "run"
    return folder_config(folder)


def _load_run(run_dir: Path, config) -> Source:
    from mhc_lm.train.checkpoint import latest_checkpoint
    from mhc_lm.train.export import load_checkpoint_weights

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ConversionError(f"{run_dir}/checkpoints has no complete checkpoint to convert")
    tok = run_dir / "tokenizer"
    return Source(config, load_checkpoint_weights(ckpt), tok if tok.is_dir() else None, run_dir, "run")


def load_source(src: str | Path) -> Source:
    """Read `src` (run directory, mhc-lm folder, Llama folder or Hub name) as an mhc-lm model."""
    folder = resolve_folder(src)
    config, kind = source_config(folder)
    if kind == "run":
        return _load_run(folder, config)
    return Source(config, load_safetensors(folder), tokenizer_dir(folder), folder, kind)
