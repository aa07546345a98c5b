"""Atomic checkpoints: every rank writes into `step_XXXXXXX.tmp/`, the main process renames it
to `step_XXXXXXX/` only once everything (Accelerate state + `trainer_state.json`) is on disk.

A checkpoint is complete iff its directory has no `.tmp` suffix and holds `trainer_state.json`,
which is written last; a run killed while writing leaves only a `.tmp` directory, which resume
ignores (and the next save removes). Contents:
- `accelerator.save_state`: model (safetensors, or DeepSpeed/FSDP shards), optimizer,
  RNG states of every process (python, numpy, torch, cuda);
- `trainer_state.json`: step, tokens, world size, every rank's data-loader state, the LR
  scheduler state and the settings a resume must keep (`mhc_lm.train.state_io`).

Before anything of a checkpoint is loaded (and before the run directory is written), its
metadata is validated and every file passes `mhc_lm.train.safe_pickle`'s scan: nothing in it is
unpickled beyond tensors and plain data. A write that fails on a full disk or a read-only /
permission error removes the `.tmp` and raises `faults.WriteFault`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from mhc_lm.config_utils import ConfigError
from mhc_lm.train import state_io

STATE_FILE = "trainer_state.json"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed (damaged files, another world size): bad input, not a bug."""
_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and p.is_dir() and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _damaged(ckpt: Path, what: str) -> CheckpointError:
    """Error for an unreadable checkpoint, naming the complete checkpoint before it (if any)."""
    ckpt = Path(ckpt)
    older = [p for p in complete_checkpoints(ckpt.parent.parent) if p.name < ckpt.name]
    fix = (f"move {ckpt} out of {ckpt.parent} and rerun: checkpoint.resume=auto then resumes "
           f"from {older[-1]}" if older else "start a new run_dir, or restore the files from a backup")
    return CheckpointError(f"checkpoint {ckpt} cannot be resumed: {what}. If it is damaged (a crash or a full disk "
                           f"while it was copied), {fix}")


def read_state(ckpt: Path) -> dict:
    path = Path(ckpt) / STATE_FILE
    if Path(ckpt).name.endswith(".tmp"):  # its trainer_state.json may be there: the rename is the commit
        raise CheckpointError(f"{ckpt} is an incomplete checkpoint (a .tmp folder: its write did not finish); "
                              "pick a complete checkpoints/step_* folder or set checkpoint.resume=auto")
    if not path.is_file():
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (no {STATE_FILE}); "
                              f"pick one listed by complete_checkpoints() or set checkpoint.resume=auto")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(ckpt, f"{STATE_FILE} is not valid JSON ({err})") from err
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise _damaged(ckpt, f"{STATE_FILE} holds no step")
    state_io.validate_state(ckpt, state, lambda what: _damaged(ckpt, what))
    return state


def check_checkpoint(accelerator, ckpt: Path, state: dict) -> None:
    """Everything about `ckpt` that can be checked before it is loaded and before the run directory
    is written: world size, strategy, the pickle scan of every file, this rank's RNG state."""
    _check_layout(accelerator, ckpt, state)
    state_io.check_scheduler_state(ckpt, state, lambda what: CheckpointError(f"checkpoint {ckpt} cannot be resumed: "
                                                                             f"{what}"))
    check_safe(ckpt)
    state_io.check_rng_state(ckpt, accelerator.process_index, lambda what: _damaged(ckpt, what))


def check_safe(ckpt: Path) -> None:
    """Every file of `ckpt` passes the pickle scan (`mhc_lm.train.safe_pickle`), or CheckpointError."""
    from mhc_lm.train.safe_pickle import UnsafePickleError, scan_tree

    try:
        scan_tree(ckpt)
    except UnsafePickleError as err:
        raise CheckpointError(f"{err}: refused, nothing of checkpoint {ckpt} was loaded (files in a run directory "
                              "are never unpickled beyond tensors and plain data)") from err


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, loader_state, keep_last: int,
                    _fault_hook=None) -> Path:
    """Collective: call on every rank. Returns the final checkpoint directory. A full disk or a
    read-only / permission error removes the partial `.tmp` and raises `faults.WriteFault`."""
    from mhc_lm.train import faults

    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    try:
        return _save_checkpoint(accelerator, run_dir, step, state, loader_state, keep_last, final, tmp, _fault_hook)
    except Exception as err:
        fault = faults.write_fault(err, Path(getattr(err, "filename", None) or tmp), run_dir,
                                   latest_checkpoint(run_dir))
        if fault is None:
            raise
        if accelerator.is_main_process:
            faults.remove_partial(tmp)
        raise fault from err


def _save_checkpoint(accelerator, run_dir, step, state, loader_state, keep_last, final, tmp, _fault_hook):
    from accelerate.utils import gather_object

    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    loader_states = gather_object([loader_state])  # one entry per rank, rank order
    if _fault_hook is not None:
        _fault_hook(tmp)  # tests: die here, mid-write
    error = None
    if accelerator.is_main_process:
        try:
            payload = {**state, "step": step, "world_size": accelerator.num_processes,
                       "distributed_type": _strategy(accelerator), "loader_states": loader_states}
            (tmp / (STATE_FILE + ".tmp")).write_text(json.dumps(payload))
            (tmp / (STATE_FILE + ".tmp")).replace(tmp / STATE_FILE)
            if final.exists():  # a complete checkpoint of the same step (resumed run): replace it
                shutil.rmtree(final)
            tmp.rename(final)
            for old in complete_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        except Exception as err:  # told to the other ranks below, instead of leaving them in a barrier
            error = err
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        failed = broadcast_object_list([None if error is None else (getattr(error, "errno", None), str(error))])[0]
        if failed is not None and error is None:
            raise OSError(failed[0], f"checkpoint write failed on the main process: {failed[1]}", str(tmp))
    if error is not None:
        raise error
    return final


def load_checkpoint(accelerator, ckpt: Path, state: dict | None = None) -> dict:
    """Collective: restores Accelerate state; returns the trainer state (with `loader_states`).
    `state`: the checkpoint's `read_state`, when the caller has read it already."""
    state = read_state(ckpt) if state is None else state
    check_checkpoint(accelerator, ckpt, state)
    written = state.get("distributed_type")
    try:
        accelerator.load_state(str(ckpt))
    except Exception as err:  # truncated safetensors / optimizer files, a missing shard, ...
        what = f"loading its model / optimizer state failed ({type(err).__name__}: {err})"
        if written is None:  # written before the strategy was recorded
            what += "; if it was written under another strategy (DDP / DeepSpeed / FSDP), relaunch with that one"
        raise _damaged(ckpt, what) from err
    return state


def _check_layout(accelerator, ckpt: Path, state: dict) -> None:
    if state.get("world_size") != accelerator.num_processes:
        raise CheckpointError(
            f"{ckpt} was written by {state.get('world_size')} processes, this run has {accelerator.num_processes}: "
            "exact data resume needs the same world size; relaunch with that many processes, or start a new run_dir")
    written, now = state.get("distributed_type"), _strategy(accelerator)
    if written is not None and written != now:
        raise CheckpointError(
            f"{ckpt} was written under {written}, this run uses {now}: the model and optimizer state are laid out "
            f"differently; relaunch with the {written} accelerate config, or export the weights "
            "(launch/export_hf.py) and start a new run_dir from them")


def _strategy(accelerator) -> str:
    """How the state is laid out: DDP / single process share one layout, DeepSpeed and FSDP each their own."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    return kind if kind in ("DEEPSPEED", "FSDP") else "DDP / single process"


# What a resumed run must share with the run that wrote its checkpoints (anything else, e.g.
# train.max_steps, evaluation, logging, checkpointing and metrics settings, may change).
RESUME_FIXED = {
    "model": None,  # every field
    "data": None,
    "optim": None,
    "train": ("seed", "batch_size", "micro_batch_size", "mixed_precision", "grad_clip"),
}
RESUME_FREE_DATA = {"num_proc", "overwrite", "out_dir"}


def resume_setting_diffs(old: dict, new: dict) -> list[str]:
    """"section.key: old -> new" for each RESUME_FIXED setting that differs between two resolved run
    configs (as dicts)."""
    diffs = []
    for section, keys in RESUME_FIXED.items():
        names = keys or sorted(set(old.get(section, {})) | set(new.get(section, {})))
        for key in names:
            if key == "preset" or (section == "data" and key in RESUME_FREE_DATA):
                continue
            a, b = old.get(section, {}).get(key), new.get(section, {}).get(key)
            if a != b:
                diffs.append(f"{section}.{key}: {a!r} -> {b!r}")
    return diffs
