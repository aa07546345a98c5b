"""Export a Hugging Face folder (weights, config, remote code, tokenizer) that
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads.

Written to `<dir>.tmp` and renamed, so an interrupted export never leaves a half folder.
The export of a run (`run_dir/hf`) is also published at the top of the run directory (hard
links, so no second copy of the weights), as the Hugging Face Trainer does with its
output_dir: `from_pretrained(run_dir, trust_remote_code=True)` and
`AutoTokenizer.from_pretrained(run_dir, trust_remote_code=True)` load it too.

An export never deletes what it did not write: the target may be new, empty, or an earlier
export (a folder holding only the files listed in its `.hf_export.json`, or, written before that
marker existed, only the files `save_pretrained` writes); the run directory, a folder above it
and anything inside its checkpoints/ are refused (`ExportTargetError`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from mhc_lm.run_dir import RUN_FILES


# Written in every export folder: the names of the files the export wrote. A folder is replaced
# by a new export only if it holds nothing else (its files are never published in the run dir).
_EXPORT_MARKER = ".hf_export.json"
# What save_pretrained of the model + tokenizer writes: recognises exports made before the marker.
_EXPORT_PATTERNS = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
                    "pytorch_model*.bin", "pytorch_model.bin.index.json", "*.py", "tokenizer*",
                    "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model",
                    "chat_template.*")


class ExportTargetError(ValueError):
    """The export folder cannot be written without deleting files that are not an earlier export."""


def is_hf_export(folder: Path, partial: bool = False) -> bool:
    """True if `folder` holds only an earlier export's files (so replacing it deletes nothing else).

    With its marker: only the files the marker lists. Without (exports written before the marker):
    only plain files named as save_pretrained names them, config.json among them, and the weights
    unless `partial` (a `.tmp` folder left by an interrupted export)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    if any(e.is_symlink() or not e.is_file() for e in entries):
        return False
    names = {e.name for e in entries}
    marker = folder / _EXPORT_MARKER
    if marker.is_file():
        try:
            listed = json.loads(marker.read_text()).get("files")
        except (ValueError, AttributeError):
            return False
        if partial and listed is None:  # written at the start of an export: everything in the .tmp is ours
            return True
        return isinstance(listed, list) and names <= {*map(str, listed), _EXPORT_MARKER}
    if not all(any(fnmatch.fnmatch(n, pat) for pat in _EXPORT_PATTERNS) for n in names):
        return False
    has_weights = any(fnmatch.fnmatch(n, pat) for n in names for pat in ("model*.safetensors", "pytorch_model*.bin"))
    return "config.json" in names and (partial or has_weights)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_export_target(out_dir: Path, run_dir: Path | None = None, checkpoint: Path | None = None) -> Path:
    """Absolute path of `out_dir` if an export may be written there; raises ExportTargetError if not.

    Refused: the current directory, the run directory, a folder above it (or above `checkpoint`),
    anything inside the run's checkpoints/ (or `checkpoint`), a file, a folder under a file, and a
    non-empty folder that is not an earlier export (`is_hf_export`), as is a `<out>.tmp` that is not one."""
    out = Path(out_dir).expanduser().resolve()
    if out == out.parent:
        raise ExportTargetError(f"export folder {out} is the filesystem root: pass a new or empty folder")
    if run_dir is not None:
        run = Path(run_dir).expanduser().resolve()
        if _within(run, out):
            raise ExportTargetError(f"export folder {out} is the run directory {run} or a folder above it: exporting "
                                    f"there would delete the run; pass a new folder (default: {run / 'hf'})")
        if _within(out, run / "checkpoints"):
            raise ExportTargetError(f"export folder {out} is inside the checkpoints of the run {run}: pass a folder "
                                    f"outside {run / 'checkpoints'} (default: {run / 'hf'})")
    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser().resolve()
        if _within(ckpt, out) or _within(out, ckpt):
            raise ExportTargetError(f"export folder {out} contains or is inside the checkpoint {ckpt}: pass another folder")
    if out == Path.cwd().resolve():
        raise ExportTargetError(f"export folder {out} is the current directory, which the export would replace: "
                                "pass a new folder (e.g. --out hf)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if existing != out and not existing.is_dir():
        raise ExportTargetError(f"export folder {out} cannot be created: {existing} is a file; pass a folder path")
    if out.exists():
        if not out.is_dir():
            raise ExportTargetError(f"export folder {out} is an existing file, not a folder: pass a folder path")
        if any(out.iterdir()) and not is_hf_export(out):
            names = sorted(p.name for p in out.iterdir())
            held = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise ExportTargetError(f"export folder {out} is not empty ({held}) and is not an earlier export "
                                    f"(only the files its {_EXPORT_MARKER} lists): exporting there would delete "
                                    "them; pass a new or empty folder")
    tmp = out.with_name(out.name + ".tmp")
    leftover_ok = tmp.is_dir() and not tmp.is_symlink() and (not any(tmp.iterdir()) or is_hf_export(tmp, partial=True))
    if (tmp.exists() or tmp.is_symlink()) and not leftover_ok:
        raise ExportTargetError(f"{tmp} (where the export to {out} is written first) exists and is not an "
                                "interrupted export: move it away or pass another folder")
    return out


def _set_tokenizer_defaults(folder: Path, max_len: int | None) -> None:
    """tokenizer_config.json: model_max_length = the model's context and padding_side = left."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    if max_len:
        cfg["model_max_length"] = int(max_len)
    cfg["padding_side"] = "left"
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _write_marker(folder: Path, files: list[str] | None) -> None:
    (folder / _EXPORT_MARKER).write_text(json.dumps({"files": files}) + "\n")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and deleted after, so a crash
    leaves either the old or the new export at `out`."""
    if not out.exists():
        tmp.rename(out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.rename(out, trash / out.name)
    try:
        tmp.rename(out)
    except BaseException:
        os.rename(trash / out.name, out)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def save_hf_folder(model, out_dir: Path, tokenizer=None, state_dict: dict | None = None,
                   run_dir: Path | None = None, checkpoint: Path | None = None) -> Path:
    """save_pretrained of an (unwrapped) MhcLmForCausalLM + tokenizer, atomically; returns the
    absolute folder. Checked first with `check_export_target` (nothing is deleted if refused)."""
    out_dir = check_export_target(out_dir, run_dir, checkpoint)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if tokenizer is not None:  # the exported config carries the tokenizer's special ids
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(tokenizer, key, None)
            if value is not None:
                setattr(model.config, key, value)
    try:
        tmp.mkdir(parents=True)
        _write_marker(tmp, None)  # an interrupted .tmp is recognised as ours
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            # the model's context, not the library's "no limit" 1e30, so truncation=True works; left
            # padding, so a padded batch of prompts generates (a decoder-only model continues the right end)
            tokenizer.save_pretrained(tmp)
            _set_tokenizer_defaults(tmp, getattr(model.config, "max_position_embeddings", None))
        _write_marker(tmp, sorted(p.name for p in tmp.iterdir() if p.name != _EXPORT_MARKER))
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        from mhc_lm.train.faults import write_fault

        fault = write_fault(err, Path(getattr(err, "filename", None) or tmp)) if isinstance(err, Exception) else None
        if fault is not None:  # a full disk / read-only target: one clear error, the partial folder removed
            raise fault from err
        raise
    _replace_dir(tmp, out_dir)
    return out_dir


_MANIFEST = ".hf_export_files.json"


def publish_in_run_dir(run_dir: Path, hf_dir: Path) -> list[str]:
    """Hard-link (or copy) every file of `hf_dir` into `run_dir`; returns the names published.

    Files published by an earlier export that the new one lacks are removed (they are listed in
    run_dir/.hf_export_files.json); files of the run itself are never touched.
    """
    run_dir, hf_dir = Path(run_dir), Path(hf_dir)
    manifest = run_dir / _MANIFEST
    previous = json.loads(manifest.read_text()) if manifest.is_file() else []
    names = sorted(p.name for p in hf_dir.iterdir() if p.is_file() and p.name != _EXPORT_MARKER)
    published = []
    for name in names:
        if name in RUN_FILES or (run_dir / name).is_dir():  # the run's own files are never replaced
            warnings.warn(f"export: {name} not published at the top of {run_dir} (the run has its own)", stacklevel=2)
            continue
        tmp = run_dir / f".{name}.publish.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(hf_dir / name, tmp)
        except OSError:  # filesystems without hard links
            shutil.copy2(hf_dir / name, tmp)
        os.replace(tmp, run_dir / name)
        published.append(name)
    for name in set(previous) - set(published):
        if name not in RUN_FILES and (run_dir / name).is_file():
            (run_dir / name).unlink()
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(published) + "\n")
    os.replace(tmp, manifest)
    return published


def export_from_trainer(trainer) -> Path | None:
    """Collective (ZeRO-3 / FSDP gather the full state dict); the main process writes run_dir/hf.

    Under DeepSpeed the engine's module holds 16-bit weights when bf16/fp16 is on; the fp32
    master weights are in the checkpoint just written at this step, so the export is made from
    it (consolidated with zero_to_fp32) whenever it exists."""
    from accelerate.utils import DistributedType

    from mhc_lm.train.checkpoint import checkpoint_dir

    acc = trainer.accelerator
    check_export_target(Path(trainer.run_dir) / "hf", trainer.run_dir)  # on every rank, before any collective
    ckpt = checkpoint_dir(trainer.run_dir, trainer.step)
    if acc.distributed_type == DistributedType.DEEPSPEED and getattr(trainer, "_last_saved_step", -1) == trainer.step:
        acc.wait_for_everyone()
        return on_main_process(acc, lambda: export_run_dir(trainer.run_dir, checkpoint=ckpt), "export")
    state_dict = acc.get_state_dict(trainer.model)

    def write():
        out = save_hf_folder(trainer.unwrapped_model, Path(trainer.run_dir) / "hf",
                             trainer.data.tokenizer, state_dict=state_dict, run_dir=trainer.run_dir)
        publish_in_run_dir(trainer.run_dir, out)
        return out

    return on_main_process(acc, write, "export")


class MainProcessError(RuntimeError):
    """Raised on every rank when a step run by the main process alone failed there."""


def on_main_process(acc, fn, what: str):
    """`fn()` on the main process only; every rank then learns whether it failed (one small
    broadcast instead of a barrier), so the other ranks raise too instead of waiting in a barrier
    until the collective timeout (NCCL: 30 min) when the main process raised."""
    from accelerate.utils import broadcast_object_list

    out, error = None, None
    if acc.is_main_process:
        try:
            out = fn()
        except Exception as err:  # re-raised below, after the other ranks were told
            error = err
    if acc.num_processes > 1:
        message = [f"{type(error).__name__}: {error}" if error is not None else None]
        message = broadcast_object_list(message, from_process=0)[0]
        if message is not None and error is None:
            raise MainProcessError(f"{what} failed on the main process: {message}")
    if error is not None:
        raise error
    return out


def _load_dcp_model(folder: Path) -> dict[str, torch.Tensor]:
    """Full state dict from a torch.distributed.checkpoint folder (single process, no process group)."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(folder), str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}


def load_checkpoint_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of a checkpoint written by `accelerator.save_state` (plain, DeepSpeed or FSDP)."""
    from mhc_lm.train.checkpoint import check_safe

    ckpt = Path(ckpt)
    check_safe(ckpt)  # before torch, DeepSpeed or DCP open any of its files
    st = ckpt / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = ckpt / "pytorch_model.bin"
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    if (ckpt / "pytorch_model").is_dir():  # DeepSpeed (accelerate uses tag "pytorch_model"): fp32 masters
        from mhc_lm.train.ds_checkpoint import zero_fp32_state_dict

        return zero_fp32_state_dict(ckpt, tag="pytorch_model")
    full = ckpt / "pytorch_model_fsdp.bin"  # FSDP, FULL_STATE_DICT
    if full.is_file():
        return torch.load(full, map_location="cpu", weights_only=True)
    sharded = ckpt / "pytorch_model_fsdp_0"  # FSDP, SHARDED_STATE_DICT: torch.distributed.checkpoint of {"model": sd}
    if sharded.is_dir():
        return _load_dcp_model(sharded)
    raise FileNotFoundError(f"{ckpt}: no model.safetensors, pytorch_model.bin or DeepSpeed pytorch_model/ found")


def export_run_dir(run_dir: Path, out_dir: Path | None = None, checkpoint: Path | None = None) -> Path:
    """Rebuild the model of a run from config.yaml, load a checkpoint (default: latest), export."""
    from mhc_lm.model import MhcLmForCausalLM
    from mhc_lm.train.checkpoint import STATE_FILE, latest_checkpoint
    from mhc_lm.train.config import build_model_config, load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints has no complete checkpoint to export")
    if ckpt.name.endswith(".tmp") or not (ckpt / STATE_FILE).is_file():
        raise FileNotFoundError(f"{ckpt} is an incomplete checkpoint (a .tmp folder, or no {STATE_FILE}: its "
                                "write did not finish); export a complete one (default: the latest)")
    out_dir = check_export_target(out_dir if out_dir else run_dir / "hf", run_dir, ckpt)  # before the slow part
    model = MhcLmForCausalLM(build_model_config(cfg.model))
    weights = load_checkpoint_weights(ckpt)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not model.config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"{ckpt}: weights do not match the model of {run_dir}/config.yaml: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    tokenizer = None
    if (run_dir / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        # no remote code from a run directory: its tokenizers are plain ones
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer", trust_remote_code=False)
    out = save_hf_folder(model, out_dir, tokenizer, run_dir=run_dir, checkpoint=ckpt)
    if out.resolve() == (run_dir / "hf").resolve():
        publish_in_run_dir(run_dir, out)
    return out
