"""The converted model and its folder: building an MhcLmForCausalLM from a source's config and
weights (checked against each other), and writing the output folder.

The source is read by mhc_lm/train/model_source.py (run directory, mhc-lm or Llama folder, Hub
name). The output folder is written as `launch/export_hf.py` writes one: into `<out>.tmp`, renamed
at the end, with the export marker listing its files, so it never replaces anything but an earlier
export.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch

from mhc_lm.train.model_folder import TOKENIZER_FILES, ConversionError


def build_model(config, state_dict: dict[str, torch.Tensor], what: str = "the source"):
    """MhcLmForCausalLM of `config` holding exactly `state_dict` (lm_head may be absent when tied).

    Built on the meta device and filled by assignment: no random init of a model that is
    overwritten anyway. The model computes RoPE on the fly, so no buffer is left on meta."""
    from mhc_lm.model import MhcLmForCausalLM

    with torch.device("meta"):
        model = MhcLmForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = dict(state_dict)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # the head is the embedding (as transformers ties it)
    missing = sorted(set(shapes) - set(weights) - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    unexpected = sorted(set(weights) - set(shapes))
    if missing or unexpected:
        raise ConversionError(f"{what}: weights do not match its config (missing {missing[:4]}, unexpected "
                              f"{unexpected[:4]})")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != shapes[name]:
            raise ConversionError(f"{what}: {name} has shape {tuple(tensor.shape)}, its config implies {shapes[name]}")
    model.load_state_dict(weights, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for name, p in [*model.named_parameters(), *model.named_buffers()]:
        if p.is_meta:
            raise ConversionError(f"{what}: {name} was not given a value")
    return model.eval()


def check_target(out: str | Path, src_folder: Path) -> Path:
    """The output folder, checked before any work: new, empty, or an earlier export; never the source."""
    from mhc_lm.train.export import ExportTargetError, check_export_target

    out_path = Path(out).expanduser().resolve()
    src = Path(src_folder).resolve()
    if out_path == src or src in out_path.parents or out_path in src.parents:
        raise ConversionError(f"output folder {out_path} is, contains or is inside the source {src}: pass a new folder")
    try:
        return check_export_target(out_path)
    except ExportTargetError as err:
        raise ConversionError(str(err)) from err


def write_folder(out: Path, write_model: Callable[[Path], None], tokenizer_dir: Path | None,
                 extra_files: tuple[Path, ...] = ()) -> Path:
    """`write_model(tmp)`, then the tokenizer files and `extra_files` copied as they are, atomically."""
    from mhc_lm.train.export import _EXPORT_MARKER, _replace_dir, _write_marker

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        _write_marker(tmp, None)  # an interrupted .tmp is recognised as ours
        write_model(tmp)
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_dir) / name).is_file():
                    shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
        for file in extra_files:
            if Path(file).is_file():
                shutil.copy2(file, tmp / Path(file).name)
        _write_marker(tmp, sorted(p.name for p in tmp.iterdir() if p.name != _EXPORT_MARKER))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out)
    return out
