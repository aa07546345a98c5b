"""Reading a model to convert and writing a converted folder.

A source is one of:
  - a run directory of `launch/pretrain.py` (config.yaml + checkpoints/: the latest checkpoint,
    which wins over the export published at its top);
  - an mhc-lm Hugging Face folder (config.json with model_type "mhc_lm", safetensors);
  - a Llama folder (config.json with model_type "llama", safetensors), mapped by `llama.py`;
  - a Hub name of either folder kind, fetched with huggingface_hub when online.
Weights are read from safetensors only (no pickle is loaded from a folder).

The output folder is written as `launch/export_hf.py` writes one: into `<out>.tmp`, renamed at the
end, with the export marker listing its files, so it never replaces anything but an earlier export.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mhc_lm.config_utils import ConfigError

# Tokenizer files copied next to a converted model, as the source holds them (not re-serialised).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
                   "chat_template.json")


class ConversionError(ConfigError):
    """The source cannot be converted as asked (exit code 2 in the CLIs, one line naming why)."""


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


def _tokenizer_dir(folder: Path) -> Path | None:
    return folder if any((folder / name).is_file() for name in TOKENIZER_FILES) else None


def _load_run(run_dir: Path) -> Source:
    from mhc_lm.model import MhcLmConfig  # noqa: F401  (registers the classes)
    from mhc_lm.train.checkpoint import latest_checkpoint
    from mhc_lm.train.config import build_model_config, load_run_config
    from mhc_lm.train.export import load_checkpoint_weights

    cfg = load_run_config(run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ConversionError(f"{run_dir}/checkpoints has no complete checkpoint to convert")
    tok = run_dir / "tokenizer"
    return Source(build_model_config(cfg.model), load_checkpoint_weights(ckpt), tok if tok.is_dir() else None,
                  run_dir, "run")


def source_config(folder: Path):
    """(MhcLmConfig, kind) of a local run directory or model folder, from its config alone."""
    folder = Path(folder)
    if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():  # a run: its latest checkpoint
        from mhc_lm.train.config import build_model_config, load_run_config

        return build_model_config(load_run_config(folder / "config.yaml").model), "run"
    raw = read_config_json(folder)
    model_type = raw.get("model_type")
    if model_type == "llama":
        from mhc_lm.convert.llama import mhc_config_from_llama

        return mhc_config_from_llama(raw, folder), "llama"
    if model_type == "mhc_lm":
        from mhc_lm.model import MhcLmConfig

        try:
            return MhcLmConfig.from_pretrained(folder), "mhc_lm"
        except (ValueError, TypeError) as err:
            raise ConversionError(f"{folder}/config.json: {err}") from err
    raise ConversionError(f"{folder}/config.json has model_type={model_type!r}: only 'llama' (LlamaForCausalLM) "
                          "and 'mhc_lm' folders are read")


def load_source(src: str | Path) -> Source:
    """Read `src` (run directory, mhc-lm folder, Llama folder or Hub name) as an mhc-lm model."""
    folder = resolve_folder(src)
    config, kind = source_config(folder)
    if kind == "run":
        return _load_run(folder)
    return Source(config, load_safetensors(folder), _tokenizer_dir(folder), folder, kind)


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
