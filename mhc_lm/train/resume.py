"""The run directory side of the Trainer: what a start writes into its run_dir, the checks that run
before anything is written (another run's files, settings that differ from the checkpoint's), and
loading a checkpoint back into the model, optimizer, scheduler, data loader and callbacks.

`RunDirResume` is a mixin of `mhc_lm.train.trainer.Trainer`: its methods use the trainer's
attributes (config, accelerator, run_dir, unwrapped_model, scheduler, data, writer, ...).
"""

from __future__ import annotations

from pathlib import Path

from mhc_lm.config_utils import ConfigError, flatten_dict, to_dict
from mhc_lm.run_dir import RunDir
from mhc_lm.train import checkpoint as ckpt_lib
from mhc_lm.train import resume_with, run_lock, state_io
from mhc_lm.train.config import load_run_config, resolved, save_config
from mhc_lm.train.run_log import write_meta


class RunDirResume:
    """Run-directory records, pre-write checks and checkpoint loading for the Trainer."""

    def _prepare_run_dir(self, resume_step: int = 0) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(resolved(self.config, self.unwrapped_model.config), self.run_dir / "config.yaml")
            write_meta(self.run_dir / "meta.json", {
                "world_size": self.world_size, "accumulation": self.accumulation,
                "distributed_type": str(acc.distributed_type), "mixed_precision": acc.mixed_precision,
                "num_parameters": self.num_parameters,
                "data_dir": str(self.data.prepared_dir) if self.data.prepared_dir else None,
                "init_from": self.init_from,
                **resume_with.meta_entry(self.run_dir, getattr(self, "_resume_changes", {}), resume_step),
            })
            if self.data.tokenizer is not None and not (self.run_dir / "tokenizer").is_dir():
                self.data.tokenizer.save_pretrained(self.run_dir / "tokenizer")
        acc.wait_for_everyone()
        if self.config.logging.trackers:
            flat = _tracker_config(to_dict(self.config))
            # a resumed run drops the TensorBoard events logged after its checkpoint, as metrics.jsonl does
            init_kwargs = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step else {}
            acc.init_trackers(self.config.logging.project, config=flat, init_kwargs=init_kwargs)

    def _resume_path(self) -> Path | None:
        choice = self.config.checkpoint.resume
        if choice == "none":
            return None
        if choice == "auto":
            return ckpt_lib.latest_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        path = Path(choice)
        if not (path / ckpt_lib.STATE_FILE).is_file():
            raise ConfigError(f"checkpoint.resume={choice}: not a complete checkpoint directory (no "
                              f"{ckpt_lib.STATE_FILE} in it); use auto, none or the path of a checkpoints/step_* folder")
        return path

    def _resume_settings(self) -> dict:
        return state_io.resume_settings(to_dict(resolved(self.config, self.unwrapped_model.config)),
                                        ckpt_lib.RESUME_FIXED)

    def _check_previous_run(self, resume_path: Path | None, resume_state: dict | None = None) -> None:
        """Refuse to mix two runs in one run_dir, or a run with files that are not a run's (before
        anything in it is written)."""
        run_dir, cfg = self.run_dir, self.config
        metrics = run_dir / "metrics.jsonl"
        holds_run = (run_dir.is_dir() and bool(ckpt_lib.complete_checkpoints(run_dir))) or (
            metrics.is_file() and metrics.stat().st_size > 0)
        if run_dir.is_dir() and not (run_dir / "meta.json").is_file() and not holds_run:
            # every start writes config.yaml then meta.json before anything else: a folder holding other
            # files but no meta.json was not written by a run (a kill between the two leaves config.yaml)
            others = sorted(p.name for p in run_dir.iterdir()
                            if p.name not in ("config.yaml", "checkpoints", run_lock.LOCK_FILE)
                            and not p.name.endswith(".tmp"))
            if others:
                raise ConfigError(
                    f"run_dir={run_dir} already holds files that are not from a training run ({', '.join(others[:5])}"
                    f"{', ...' if len(others) > 5 else ''}); the run would write config.yaml, meta.json, metrics.jsonl, "
                    "checkpoints/ and hf/ files into it. Fix: choose a new or empty run_dir")
        if cfg.checkpoint.resume == "none" and holds_run:
            raise ConfigError(
                f"{run_dir} already holds a run (checkpoints/ or metrics.jsonl) and checkpoint.resume=none: a new run "
                "would mix its logs and checkpoints with the old ones. Fix: choose a new run_dir, delete the old "
                "one, or resume it (checkpoint.resume=auto)")
        if resume_path is None:
            return
        old = (resume_state or {}).get("settings")  # stored in the checkpoint; config.yaml for older ones
        old_path = resume_path.parents[1] / "config.yaml"
        if old is None and not old_path.is_file():
            return
        if old is None:
            old = state_io.resume_settings(to_dict(resolved(load_run_config(old_path))), ckpt_lib.RESUME_FIXED)
        new = self._resume_settings()
        diffs, self._resume_changes = resume_with.split_diffs(ckpt_lib.resume_setting_diffs(old, new), old, new,
                                                              cfg.checkpoint.resume_with)
        if diffs:
            raise ConfigError(
                f"{resume_path} was written by a run with other settings ({'; '.join(diffs)}); resuming needs the "
                "same model, data, optimizer and batch settings. Fix: use a new run_dir (or restore those values). "
                + resume_with.refusal_hint(diffs))
        if old["train"]["max_steps"] != new["train"]["max_steps"] and self.accelerator.is_main_process:
            print(f"[mhc-lm] train.max_steps {old['train']['max_steps']} -> {new['train']['max_steps']}: the LR "
                  "schedule follows the new length from the resumed step on", flush=True)

    def _clear_previous_attempt(self, path: Path | None) -> None:
        """After every check passed and the run records are written: DIVERGED of an earlier attempt
        removed, metrics.jsonl cut back to the resumed step."""
        acc = self.accelerator
        earlier = RunDir(self.run_dir).clear_divergence() if acc.is_main_process else None
        if earlier is not None:  # an earlier attempt diverged: this one retries
            print(f"[mhc-lm] {self.run_dir / 'DIVERGED'} from an earlier attempt: {earlier.message} (file removed, "
                  "retrying)", flush=True)
        if acc.is_main_process:
            # a run that died before its first checkpoint starts the log over; a resumed one drops later lines
            self.writer.truncate_after(self.step if path is not None else -1)
            if path is not None:
                print(f"[mhc-lm] resumed from {path} at step {self.step}", flush=True)

    def _resume(self, path: Path | None, state: dict | None = None) -> None:
        """Load the checkpoint into the model, optimizer, scheduler, data loader and callbacks (no file is written)."""
        if path is None:
            return
        state = ckpt_lib.load_checkpoint(self.accelerator, path, state)
        state_io.load_scheduler_state(self.scheduler, state)
        resume_with.apply_optimizer_settings(self)  # the current optim.lr (a sanctioned change) from here on
        self.step, self.tokens = state["step"], state["tokens"]
        self._last_saved_step = self.step
        loader_state = state["loader_states"][self.accelerator.process_index]
        if loader_state is not None and hasattr(self.data.train_loader, "load_state_dict"):
            self.data.train_loader.load_state_dict(loader_state)
        saved = state.get("callbacks", {})
        for key, cb in self._stateful_callbacks().items():
            if key in saved:
                cb.load_state_dict(saved[key])


def _tracker_config(tree: dict) -> dict:
    """Dotted keys with scalar values, as trackers take a run's hyperparameters."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten_dict(tree).items()}
