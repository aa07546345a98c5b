"""The trainer's own state in a checkpoint, stored as JSON, and the checks that a checkpoint's files
are safe and complete before anything of it is loaded.

- The LR scheduler is not registered with Accelerate (which pickles it to
  `custom_checkpoint_0.pkl` and unpickles that without restriction); its state dict (plain
  numbers) goes into `trainer_state.json` under "scheduler".
- (`checkpoint.check_safe`) Every file of a checkpoint is scanned by `mhc_lm.train.safe_pickle`
  before Accelerate, DeepSpeed or FSDP open it: a pickle that imports anything but data types
  is refused, with the file named, and nothing of the checkpoint is loaded.
- `trainer_state.json` is validated (keys and types, its step against the directory name) and
  each rank's RNG state file must exist and hold the states: Accelerate skips a missing or
  unreadable one silently, which would resume with other random numbers.
- The settings a resume must keep (`checkpoint.RESUME_FIXED`) are stored in each checkpoint, so
  the check does not depend on the run's config.yaml still being there.
"""

from __future__ import annotations

import re
from pathlib import Path

LEGACY_SCHEDULER_FILE = "custom_checkpoint_0.pkl"
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")
# key -> accepted types of trainer_state.json (the "scheduler" and "settings" keys are checked where used)
REQUIRED_KEYS = {"step": (int,), "tokens": (int,), "world_size": (int,), "loader_states": (list,)}
_STEP_DIR = re.compile(r"^step_(\d+)$")


def scheduler_state(scheduler) -> dict:
    """The LR scheduler's state dict, JSON-serialisable (LambdaLR: counters and lr lists)."""
    out = {}
    for key, value in scheduler.state_dict().items():
        if key == "lr_lambdas":  # a plain function's entry is None; a callable object's is its __dict__
            value = [None for _ in value]
        out[key] = value
    return out


def check_scheduler_state(ckpt: Path, state: dict, error) -> None:
    """The checkpoint holds the scheduler state in trainer_state.json. One written before (the
    scheduler pickled to custom_checkpoint_0.pkl, which Accelerate unpickles without
    restriction) is refused with the way out: its weights still export."""
    if state.get("scheduler") is not None:
        saved = state["scheduler"]
        if not isinstance(saved, dict) or not {"last_epoch", "base_lrs"} <= set(saved):
            raise error("its LR scheduler state in trainer_state.json is not a scheduler state dict")
        return
    if (Path(ckpt) / LEGACY_SCHEDULER_FILE).is_file():
        raise error(f"it was written by an older mhc-lm that pickled the LR scheduler ({LEGACY_SCHEDULER_FILE}), "
                    "and checkpoints are never unpickled. It is intact: resume it with the mhc-lm version that "
                    "wrote it, or export its weights (launch/export_hf.py) and start a new run from them")
    raise error("its trainer_state.json holds no LR scheduler state")


def load_scheduler_state(scheduler, state: dict) -> None:
    """Restore the LR scheduler from trainer_state.json (checked by `check_scheduler_state`)."""
    saved = dict(state["scheduler"])
    saved["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)  # the lambdas are rebuilt from the config
    scheduler.load_state_dict(saved)


def resume_settings(config: dict, sections) -> dict:
    """`sections` of a resolved run config (as a dict): those `checkpoint.resume_setting_diffs`
    compares, as JSON gives them back (tuples become lists), for trainer_state.json."""
    import json

    return json.loads(json.dumps({k: config.get(k, {}) for k in sections}, default=str))


def validate_state(ckpt: Path, state: dict, error) -> None:
    """Keys and types of trainer_state.json, and its step against the directory name step_N."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise error(f"trainer_state.json lacks {', '.join(missing)}")
    wrong = [k for k, types in REQUIRED_KEYS.items() if not isinstance(state[k], types) or isinstance(state[k], bool)]
    if wrong:
        raise error(f"trainer_state.json has a value of the wrong type for {', '.join(wrong)}")
    if len(state["loader_states"]) != state["world_size"]:
        raise error(f"trainer_state.json holds {len(state['loader_states'])} data-loader states for world_size="
                    f"{state['world_size']}")
    m = _STEP_DIR.match(Path(ckpt).name)
    if m and int(m.group(1)) != state["step"]:
        raise error(f"trainer_state.json says step {state['step']} but the directory is {Path(ckpt).name}")


def check_rng_state(ckpt: Path, process_index: int, error) -> None:
    """This rank's RNG state file exists and holds the python / numpy / torch states (read with
    `weights_only=True`, after the pickle scan)."""
    rng = Path(ckpt) / f"random_states_{process_index}.pkl"
    if not rng.is_file():
        raise error(f"{rng.name} (the RNG state of process {process_index}) is missing")
    from accelerate.utils import load

    try:
        states = load(rng, map_location="cpu")  # weights_only=True, numpy arrays allowed
    except Exception as err:
        raise error(f"{rng.name} (the RNG state of process {process_index}) cannot be read "
                    f"({type(err).__name__})") from err
    if not isinstance(states, dict) or any(k not in states for k in RNG_KEYS):
        raise error(f"{rng.name} holds no RNG state (expected {', '.join(RNG_KEYS)})")
