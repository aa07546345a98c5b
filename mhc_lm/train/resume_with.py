"""Sanctioned resume with changed settings: lower the lr, lengthen the warmup, turn clipping on.

A resumed run must share the model, data, optimizer and batch settings of the run that wrote its
checkpoints (`checkpoint.RESUME_FIXED`). The settings in SANCTIONED may differ when the resume says
so, by listing them in `checkpoint.resume_with` or, on the command line, with

    python launch/pretrain.py --config CONFIG --resume-with optim.lr=1e-3 --resume-with train.grad_clip=1.0

(each `--resume-with KEY=VALUE` is an override plus KEY added to checkpoint.resume_with). Every
sanctioned change is recorded in meta.json under "resumed_with" (one entry per resume that made
changes: the step it resumed from and {key: [old, new]}), and is in effect from the resumed step
on: after a checkpoint is loaded, the optimizer's learning rates are recomputed from the current
`optim` section (the checkpoint carries the old peak lr in the optimizer and scheduler states),
the schedule continues at the resumed step. Anything else that differs is still refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from mhc_lm.config_utils import ConfigError

SANCTIONED = {
    "optim.lr": "peak learning rate (the schedule keeps its shape; the lr of the resumed step follows it)",
    "optim.warmup_steps": "linear warmup length (steps counted from the run's start)",
    "optim.min_lr_ratio": "final learning rate as a fraction of the peak",
    "optim.z_loss": "z-loss coefficient",
    "train.grad_clip": "gradient clipping (0 = off)",
}
"""Settings fixed on resume that --resume-with (checkpoint.resume_with) may change."""


def accepted() -> str:
    return ", ".join(SANCTIONED)


def check_keys(keys) -> None:
    """ConfigError naming the keys of checkpoint.resume_with that cannot change on resume."""
    bad = [k for k in keys if k not in SANCTIONED]
    if bad:
        raise ConfigError(f"checkpoint.resume_with: {', '.join(map(str, bad))} cannot be changed on resume; the "
                          f"sanctioned changes are {accepted()} (settings free anyway, e.g. train.max_steps, need no "
                          "listing)")


def parse_cli(items: list[str]) -> tuple[list[str], list[str]]:
    """["optim.lr=1e-3", ...] -> (overrides, keys); ConfigError on a malformed or unsanctioned item."""
    overrides, keys = [], []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(f"--resume-with {item!r}: expected KEY=VALUE, e.g. --resume-with optim.lr=1e-3")
        check_keys([key])
        overrides.append(f"{key}={value}")
        keys.append(key)
    return overrides, keys


def split_diffs(diffs: list[str], old: dict, new: dict, allowed) -> tuple[list[str], dict]:
    """Split resume_setting_diffs' "section.key: old -> new" strings into (refused, {key: [old, new]}
    sanctioned by `allowed`)."""
    refused, changes = [], {}
    for diff in diffs:
        key = diff.split(":", 1)[0]
        if key in allowed:
            section, name = key.split(".", 1)
            changes[key] = [old.get(section, {}).get(name), new.get(section, {}).get(name)]
        else:
            refused.append(diff)
    return refused, changes


def refusal_hint(refused: list[str]) -> str:
    keys = [d.split(":", 1)[0] for d in refused]
    fixable = [k for k in keys if k in SANCTIONED]
    if fixable and len(fixable) == len(keys):
        return ("To resume with this change on purpose: " + " ".join(f"--resume-with {k}=VALUE" for k in fixable)
                + " (or list the keys in checkpoint.resume_with).")
    return (f"Changes sanctioned on resume (--resume-with KEY=VALUE or checkpoint.resume_with): {accepted()}; "
            "free to change on resume: train.max_steps, evaluation, logging, checkpoint, metrics and spike-policy "
            "(train.on_spike, rewind_skip_batches, max_rewinds) settings.")


def divergence_advice() -> str:
    """What to tell a user whose run diverged: only what resume accepts."""
    return ("To go on from the last good checkpoint with a sanctioned change, rerun the same command with e.g. "
            f"--resume-with optim.lr=LOWER (accepted by --resume-with: {accepted()}; train.on_spike=rewind "
            "and train.max_steps may change without it).")


def meta_entry(run_dir: Path, changes: dict, step: int) -> dict:
    """{"resumed_with": [...]} for meta.json: the history already there plus this resume's changes."""
    history = []
    path = Path(run_dir) / "meta.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            history = [h for h in old.get("resumed_with", []) if isinstance(h, dict) and h.get("step", 0) <= step]
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            history = []
    if changes:
        history.append({"step": step, "changes": changes})
    return {"resumed_with": history} if history else {}


def apply_optimizer_settings(trainer) -> None:
    """After a checkpoint load: learning rates from the current `optim` section at the resumed step.

    The optimizer and scheduler states hold the peak lr they were built with; the schedule's shape
    (warmup, floor) comes from the current config already (LambdaLR does not save a lambda). With
    unchanged settings this recomputes the very values the checkpoint holds (the same expression
    LambdaLR evaluates), so it is a no-op."""
    sched = trainer.scheduler
    base = trainer.config.optim.lr
    groups = sched.optimizer.param_groups
    sched.base_lrs = [base for _ in sched.base_lrs]
    lrs = [b * f(sched.last_epoch) for f, b in zip(sched.lr_lambdas, sched.base_lrs)]
    for group, lr in zip(groups, lrs):
        group["initial_lr"] = base
        group["lr"] = lr
    sched._last_lr = [group["lr"] for group in groups]
