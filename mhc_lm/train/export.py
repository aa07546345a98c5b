"""Export a Hugging Face folder (weights, config, remote code, tokenizer) that
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads.

Written to `<dir>.tmp` and renamed, so an interrupted export never leaves a half folder.
The export of a run (`run_dir/hf`) is also published at the top of the run directory (hard
links, so no second copy of the weights), as the Hugging Face Trainer does with its
output_dir: `from_pretrained(run_dir, trust_remote_code=True)` and
`AutoTokenizer.from_pretrained(run_dir, trust_remote_code=True)` load it too.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch


def save_hf_folder(model, out_dir: Path, tokenizer=None, state_dict: dict | None = None) -> Path:
    """save_pretrained of an (unwrapped) MhcLmForCausalLM + tokenizer, atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if tokenizer is not None:  # the exported config carries the tokenizer's special ids
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(tokenizer, key, None)
            if value is not None:
                setattr(model.config, key, value)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


# Files of the run itself, never replaced by an exported file of the same name.
_RUN_FILES = {"config.yaml", "meta.json", "metrics.jsonl", "DIVERGED", "stability.json"}
_MANIFEST = ".hf_export_files.json"


def publish_in_run_dir(run_dir: Path, hf_dir: Path) -> list[str]:
    """Hard-link (or copy) every file of `hf_dir` into `run_dir`; returns the names published.

    Files published by an earlier export that the new one lacks are removed (they are listed in
    run_dir/.hf_export_files.json); files of the run itself are never touched.
    """
    run_dir, hf_dir = Path(run_dir), Path(hf_dir)
    manifest = run_dir / _MANIFEST
    previous = json.loads(manifest.read_text()) if manifest.is_file() else []
    names = sorted(p.name for p in hf_dir.iterdir() if p.is_file())
    published = []
    for name in names:
        if name in _RUN_FILES or (run_dir / name).is_dir():
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
        if name not in _RUN_FILES and (run_dir / name).is_file():
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
    ckpt = checkpoint_dir(trainer.run_dir, trainer.step)
    if acc.distributed_type == DistributedType.DEEPSPEED and getattr(trainer, "_last_saved_step", -1) == trainer.step:
        acc.wait_for_everyone()
        out = export_run_dir(trainer.run_dir, checkpoint=ckpt) if acc.is_main_process else None
        acc.wait_for_everyone()
        return out
    state_dict = acc.get_state_dict(trainer.model)
    out = None
    if acc.is_main_process:
        out = save_hf_folder(trainer.unwrapped_model, Path(trainer.run_dir) / "hf",
                             trainer.data.tokenizer, state_dict=state_dict)
        publish_in_run_dir(trainer.run_dir, out)
    acc.wait_for_everyone()
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
    ckpt = Path(ckpt)
    st = ckpt / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = ckpt / "pytorch_model.bin"
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    if (ckpt / "pytorch_model").is_dir():  # DeepSpeed ZeRO shards (accelerate uses tag "pytorch_model")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="pytorch_model")
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
    from mhc_lm.train.checkpoint import latest_checkpoint
    from mhc_lm.train.config import build_model_config, load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints has no complete checkpoint to export")
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

        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer", trust_remote_code=True)
    out = save_hf_folder(model, Path(out_dir) if out_dir else run_dir / "hf", tokenizer)
    if out.resolve() == (run_dir / "hf").resolve():
        publish_in_run_dir(run_dir, out)
    return out
