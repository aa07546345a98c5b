"""`train.init_from`, the run config's half: the tokenizer and architecture checks made while the
run config is built, and the model config a run with train.init_from trains (what it changes in a
run: mhc_lm/train/init_from.py).

RunConfig.__post_init__ calls `check_run_config`, so this module imports nothing that imports the
run config: it reads model folders through mhc_lm/train/model_folder.py, and a run directory given
as train.init_from through the reader the run config passes in (reading a run directory means
loading its config.yaml as a run config).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from mhc_lm.config_utils import ConfigError
from mhc_lm.train.model_folder import folder_config, is_run_dir, resolve_folder

# Always compared when the run config sets them (they shape the weights or the function).
ARCHITECTURE_FIELDS = ("residual_mode", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
                       "rope_theta", "rms_norm_eps", "block_norm", "qk_norm")
# Compared only in the residual modes they belong to: each mode's `architecture_fields`.
# Free to set in the run config (the run's value wins): no effect on the weights' meaning.
RUN_FIELDS = ("max_position_embeddings", "initializer_range", "mhc_init", "mhc_gate_init", "fused_kernels", "cpu_kernels",
              "mixing_recompute", "mixing_recompute_layers", "attention_dropout", "pad_token_id", "bos_token_id",
              "eos_token_id")


def _mode_fields(mode: str) -> tuple[str, ...]:
    from mhc_lm.model import RESIDUAL_MODES

    cls = RESIDUAL_MODES.get(mode)
    return cls.architecture_fields if cls is not None else ()


def tokenizer_source(path: str) -> str:
    """Where PATH's tokenizer is: the folder itself (a model folder or Hub name), run_dir/tokenizer for a run."""
    folder = Path(path).expanduser()
    if is_run_dir(folder) and (folder / "tokenizer").is_dir():
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


def source_model_config(path: str, run_model_config: Callable[[Path], object]):
    """The MhcLmConfig of train.init_from=PATH (a run directory through `run_model_config`)."""
    try:
        folder = resolve_folder(path)
        return run_model_config(folder) if is_run_dir(folder) else folder_config(folder)[0]
    except ConfigError as err:
        raise ConfigError(f"train.init_from={path}: {err}") from err


def check_run_config(cfg, ours: dict, run_model_config: Callable[[Path], object]) -> None:
    """Called by RunConfig.__post_init__ when train.init_from is set: tokenizer and architecture checks.

    `ours`: the model kwargs the run config sets (`model_kwargs(cfg.model)`)."""
    path = cfg.train.init_from
    tokenizer = tokenizer_source(path)
    if cfg.data.tokenizer is None:
        cfg.data.tokenizer = tokenizer
        # DataConfig filled in the size of a tokenizer to train (there was none); with one the vocab is its own
        cfg.data.vocab_size = None
    elif not _same_tokenizer(cfg.data.tokenizer, tokenizer):
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer} is not the tokenizer of train.init_from={path}, whose "
                          "embedding rows index its own: leave data.tokenizer unset (it is taken from there)")
    merged_model_config(path, ours, source_model_config(path, run_model_config))  # raises on a mismatch


def _differs(ours, theirs) -> bool:
    if isinstance(ours, float) or isinstance(theirs, float):
        return abs(float(ours) - float(theirs)) > 1e-12 * max(1.0, abs(float(theirs)))
    return ours != theirs


def merged_model_config(path: str, ours: dict, source):
    """PATH's MhcLmConfig `source`, overridden by the fields the run config sets (`ours`); ConfigError naming
    the first architecture field in which they differ."""
    from mhc_lm.model import MhcLmConfig

    mode = source.residual_mode
    compared = ARCHITECTURE_FIELDS + _mode_fields(ours.get("residual_mode", mode))
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
