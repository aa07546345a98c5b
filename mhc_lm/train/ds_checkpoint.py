"""fp32 master weights of DeepSpeed runs, read from a checkpoint (export). (A live engine's
masters, for the update ratio, are read by `mhc_lm.metrics.update.deepspeed_fp32_piece`.)

Under `"bf16": {"enabled": true}` the engine's module holds bf16 copies; the fp32 masters live in
the optimizer, partitioned over the data-parallel ranks. Two checkpoint layouts exist:

    ZeRO optimizers (stage 1/2/3; any precision except bf16 at stage 0/1): the state records its
        `zero_stage`; DeepSpeed's `zero_to_fp32` reads it.
    BF16_Optimizer (DeepSpeed picks it for bf16 with ZeRO stage 0/1 and fp32 gradient
        accumulation): no `zero_stage`; `zero_to_fp32` refuses it ("... is not a zero checkpoint"),
        so it is read here.

Under bf16 both name their files `bf16_zero_pp_rank_R_mp_rank_00_optim_states.pt`, so the layout
is told by content. Its layout (deepspeed/runtime/bf16_optimizer.py): per parameter group,
the trainable parameters are flattened in order into one vector, padded at the end to a multiple
of the world size, and split into equal partitions; rank R saves partition R in fp32
(`single_partition_of_fp32_groups`). Concatenating the ranks' partitions and slicing in the order
of `param_shapes` (mp_rank_00_model_states.pt) gives every parameter back.

Every file is first scanned by `mhc_lm.train.safe_pickle`, which refuses a pickle that imports
anything but data types: DeepSpeed's own reader unpickles without restriction. The files this
module reads itself go through torch's restricted (weights_only) unpickler as well.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mhc_lm.train.safe_pickle import load_scanned, scan_tree

_BF16_OPTIM = re.compile(r"^bf16_zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def _bf16_optimizer_files(ds_dir: Path) -> list[Path]:
    found = sorted((int(m.group(1)), p) for p in ds_dir.iterdir() if (m := _BF16_OPTIM.match(p.name)))
    ranks = [r for r, _ in found]
    if ranks != list(range(len(ranks))):
        raise FileNotFoundError(f"{ds_dir}: bf16 optimizer shards of ranks {ranks}: some ranks' files are missing")
    return [p for _, p in found]


def bf16_optimizer_fp32_state_dict(ds_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of a DeepSpeed BF16_Optimizer checkpoint folder (e.g. `ckpt/pytorch_model`)."""
    ds_dir = Path(ds_dir)
    files = _bf16_optimizer_files(ds_dir)
    model_state = load_scanned(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu")
    shards = [load_scanned(f, map_location="cpu")["optimizer_state_dict"] for f in files]
    groups_shapes = model_state["param_shapes"]  # list (per group) of {name: shape}, in flattening order
    out: dict[str, torch.Tensor] = {}
    for g, shapes in enumerate(groups_shapes):
        parts = [s["single_partition_of_fp32_groups"][g].float() for s in shards]
        if len({p.numel() for p in parts}) != 1:
            raise ValueError(f"{ds_dir}: group {g}: the ranks' fp32 partitions differ in size")
        flat = torch.cat(parts)  # (padded group numel,)
        need = sum(int(torch.Size(s).numel()) for s in shapes.values())
        padding = flat.numel() - need
        if padding < 0 or padding != sum(int(s["group_paddings"][g]) for s in shards):
            pads = [s["group_paddings"][g] for s in shards]
            raise ValueError(f"{ds_dir}: group {g} holds {flat.numel()} fp32 values for {need} parameter values "
                             f"(+ padding {pads}): not the layout this reader knows")
        offset = 0
        for name, shape in shapes.items():
            n = int(torch.Size(shape).numel())
            out[name] = flat[offset:offset + n].view(shape).clone()
            offset += n
    module = model_state.get("module") or {}
    for name in model_state.get("buffer_names") or []:
        if name in module:
            out[name] = module[name]
    for name, value in (model_state.get("frozen_param_fragments") or {}).items():
        out.setdefault(name, value)
    for alias, source in (model_state.get("shared_params") or {}).items():
        if source in out:
            out[alias] = out[source]
    return out


def is_bf16_optimizer_checkpoint(ds_dir: Path) -> bool:
    """True for the BF16_Optimizer layout. Told by content, not by name: ZeRO-2/3 under bf16 also
    name their files `bf16_zero_pp_rank_*`, but their state records a `zero_stage`."""
    files = [p for p in Path(ds_dir).iterdir() if _BF16_OPTIM.match(p.name)]
    if not files:
        return False
    state = load_scanned(min(files), map_location="cpu", mmap=True)["optimizer_state_dict"]
    return "zero_stage" not in state and "single_partition_of_fp32_groups" in state


def zero_fp32_state_dict(ckpt: Path, tag: str = "pytorch_model") -> dict[str, torch.Tensor]:
    """Full fp32 state dict of an `accelerator.save_state` checkpoint written under DeepSpeed, from
    the optimizer's fp32 masters, whatever the ZeRO stage and optimizer layout."""
    ds_dir = Path(ckpt) / tag
    scan_tree(ckpt)  # DeepSpeed's reader unpickles every file without restriction
    if is_bf16_optimizer_checkpoint(ds_dir):
        return bf16_optimizer_fp32_state_dict(ds_dir)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
