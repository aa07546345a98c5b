"""`train.on_spike`: what the trainer does when a step's loss or gradient norm spikes.

    none    today's behaviour: spikes are only logged (StabilityCallback); a non-finite loss stops the run
    skip    drop the spiking step's optimizer update, decided on device (`skip_step.py`); the step counts
    rewind  restore the last complete checkpoint before the spike, move the data on, continue

A spike is the rule of `mhc_lm/metrics/spikes.py` applied to the step's mean loss and to its global
gradient norm (before clipping), with metrics.spike_window / spike_sigma / spike_min_history. The
policy keeps its own two detectors (saved in every checkpoint), so it acts with metrics.enabled=false
too. A non-finite loss or gradient norm counts as a spike for skip and rewind, armed or not (under
fp16 an infinite gradient norm is a loss-scale overflow, which the grad scaler skips by itself).

Each action is one metrics.jsonl row with exactly these keys:
    {"step": s, "event": "skip" | "rewind", "value": v, "threshold": t, "batches_skipped": k}
s is the spiking step, v the loss when the loss spiked (or was non-finite), else the gradient norm,
t that series' mean + k sigma (nan while the rule was not armed); k is 1 for a skip (the step's batch
was not learned from) and train.rewind_skip_batches for a rewind.

Rewind, deterministically: the spike at step s (its batch is global batch s - 1 of the run's data
order) restores checkpoint c, the latest complete one (c < s), and the data continue at global
batch s - 1 + rewind_skip_batches: the steps c+1 .. are redone on the batches after the skipped
ones (the batches between c and the spike, seen by the model that spiked, are not replayed, as in
PaLM). Every rewind is first appended to run_dir/rewinds.json (atomic write), then the trainer
restores c exactly as a restarted run would (`Trainer._resume` loads the states, metrics.jsonl is cut at c) and
`after_resume` replays the recorded rewinds of c (data position, event rows). A process killed at
any point around a rewind and started again with the same command therefore resumes into the same
state: it either finds no record and meets the same spike again, or finds it and applies it.
train.max_rewinds bounds the rewinds of a run (records in rewinds.json); the spike after them stops
the run with DIVERGED (exit 3), listing the rewinds made.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from mhc_lm.config_utils import ConfigError
from mhc_lm.metrics.spikes import SpikeDetector
from mhc_lm.run_dir import REWINDS, Divergence, RunDir
from mhc_lm.train import checkpoint as ckpt_lib
from mhc_lm.train.diverged import TrainingDiverged
from mhc_lm.train.resume_with import divergence_advice
from mhc_lm.train.skip_step import DeviceSpikeDetector

REWINDS_FILE = REWINDS
EVENT_KEYS = ("step", "event", "value", "threshold", "batches_skipped")
MAX_NONFINITE_SKIPS = 20
"""skip: consecutive non-finite steps (all skipped) after which the run counts as diverged."""
SERIES = ("loss", "grad_norm")


def read_rewinds(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / REWINDS_FILE
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())["rewinds"]
        assert isinstance(records, list) and all(
            isinstance(r, dict) and all(isinstance(r.get(k), int) for k in ("step", "checkpoint_step", "advance"))
            for r in records)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as err:
        raise ConfigError(f"{path} is damaged ({type(err).__name__}); delete it and rerun: the rewinds since the last "
                          "checkpoint are then made again (train.max_rewinds counts from zero)") from err
    return records


def write_rewinds(run_dir: Path, records: list[dict]) -> None:
    path = Path(run_dir) / REWINDS_FILE
    if not records:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"rewinds": records}, indent=1) + "\n")
    tmp.replace(path)


def threshold_of(det: SpikeDetector) -> float:
    """mean + k sigma of the detector's history (nan while it is not armed)."""
    if len(det.history) < det.min_history:
        return math.nan
    hist = np.fromiter(det.history, dtype=np.float64, count=len(det.history))
    return float(hist.mean() + det.sigma * hist.std())


def _unwrapped_optimizer(trainer):
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


class SpikePolicy:
    """The trainer's hook: `apply` replaces "read the loss, check it, optimizer.step()" of a step."""

    state_key = "spike_policy"

    def __init__(self, trainer):
        cfg = trainer.config
        self.mode = cfg.train.on_spike
        self.skip_batches, self.max_rewinds = cfg.train.rewind_skip_batches, cfg.train.max_rewinds
        self.fp16 = trainer.accelerator.mixed_precision == "fp16"
        m = cfg.metrics
        if self.mode == "skip":
            from accelerate.utils import DistributedType

            if trainer.accelerator.distributed_type == DistributedType.DEEPSPEED:
                raise ConfigError("train.on_spike=skip masks the update inside the trainer's AdamW, and DeepSpeed "
                                  "steps its own optimizer: use on_spike=rewind (or none) under DeepSpeed")
            device = trainer.accelerator.device
            self.detectors = {s: DeviceSpikeDetector(m.spike_window, m.spike_sigma, m.spike_min_history, device)
                              for s in SERIES}
        else:
            self.detectors = {s: SpikeDetector(m.spike_window, m.spike_sigma, m.spike_min_history) for s in SERIES}
        self.pending: dict | None = None  # rewind: the spike that vetoed the step
        self.rewinds: list[dict] = []  # rewinds.json records in this run's history
        self._skip: tuple | None = None  # skip: device tensors of the last step's decision
        self._nonfinite_run = 0

    @classmethod
    def attach(cls, trainer) -> "SpikePolicy":
        """The policy of trainer.config.train.on_spike; skip and rewind join the (checkpointed) callbacks."""
        policy = cls(trainer)
        if policy.mode != "none":
            trainer.callbacks.append(policy)
        return policy

    # ------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {"detectors": {s: d.state_dict() for s, d in self.detectors.items()}}

    def load_state_dict(self, state: dict) -> None:
        for s, det in self.detectors.items():
            if s in state.get("detectors", {}):
                det.load_state_dict(state["detectors"][s])

    # ------------------------------------------------------------ the step
    def apply(self, trainer, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> tuple[float, float]:
        """Finish an optimizer step whose gradients are ready: (mean loss, grad norm) as floats."""
        has_norm = grad_norm is not None
        if self.mode == "skip":
            self._decide_on_device(trainer, loss, grad_norm)
            trainer.optimizer.step()  # masked on device
        mean_loss = loss.item()
        gn = float(grad_norm) if has_norm else float("nan")
        if self.mode == "none":
            trainer._check_finite(mean_loss, gn, has_norm)
            trainer.optimizer.step()
        elif self.mode == "skip":
            self._check_nonfinite_run(trainer, mean_loss, gn, has_norm)
        else:
            self.pending = self._host_trigger(trainer, mean_loss, gn, has_norm)
            if self.pending is None:
                trainer._check_finite(mean_loss, gn, has_norm)
                trainer.optimizer.step()
        return mean_loss, gn

    def _nonfinite(self, name: str, value) -> bool:
        if name == "grad_norm" and self.fp16:
            return False  # a loss-scale overflow: the grad scaler skips it (Trainer._check_finite counts them)
        return not math.isfinite(value)

    def _decide_on_device(self, trainer, loss, grad_norm) -> None:
        values = {"loss": loss, "grad_norm": grad_norm}
        skip, parts = None, []
        for name in SERIES:
            v = values[name]
            if v is None:
                continue
            v = v.detach().reshape(()).to(torch.float64)
            spike, thr = self.detectors[name].update(v)
            if name == "grad_norm" and self.fp16:
                hit = spike & torch.isfinite(v)  # an overflow is the grad scaler's to skip
            else:
                hit = spike | ~torch.isfinite(v)
            skip = hit if skip is None else skip | hit
            parts.append((hit, v, thr))
        _unwrapped_optimizer(trainer).skip = skip.to(trainer.accelerator.device)
        self._skip = (skip, parts)

    def _check_nonfinite_run(self, trainer, loss: float, gn: float, has_norm: bool) -> None:
        if self._nonfinite(None, loss) or (has_norm and self._nonfinite("grad_norm", gn)):
            self._nonfinite_run += 1  # skipped on device; a run of them means the state itself is broken
            if self._nonfinite_run >= MAX_NONFINITE_SKIPS:
                trainer._diverged(loss, gn)
            return
        self._nonfinite_run = 0
        trainer._check_finite(loss, gn, has_norm)  # fp16 overflow bookkeeping; finite here

    def _host_trigger(self, trainer, loss: float, gn: float, has_norm: bool) -> dict | None:
        first = None
        for name, value in (("loss", loss), ("grad_norm", gn)):
            if name == "grad_norm" and not has_norm:
                continue
            det = self.detectors[name]
            if name == "grad_norm" and self.fp16 and not math.isfinite(value):
                continue  # a loss-scale overflow: the grad scaler skips it, Trainer._check_finite counts them
            threshold = threshold_of(det)
            spike, _ = det.update(value)
            if (spike or self._nonfinite(name, value)) and first is None:
                first = {"step": trainer.step + 1, "series": name, "value": float(value), "threshold": threshold}
        return first

    # ------------------------------------------------------------ callback hooks
    def on_train_begin(self, trainer) -> None:
        if self.mode == "rewind":
            self.after_resume(trainer)

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        if self._skip is None:
            return
        skip, parts = self._skip
        self._skip = None
        flat = torch.stack([torch.stack([h.to(torch.float64), v, t]) for h, v, t in parts]).tolist()
        if not any(h for h, _, _ in flat):
            return
        _, value, threshold = next(row for row in flat if row[0])
        trainer.writer.write({"step": step, "event": "skip", "value": value, "threshold": threshold,
                              "batches_skipped": 1})

    def on_train_end(self, trainer) -> None:
        pass

    # ------------------------------------------------------------ rewind
    def _stop(self, trainer, why: str, spike: dict | None = None):
        made = "; ".join(f"step {r['step']} ({r.get('series', 'loss')} {r['value']:.4g} > {r['threshold']:.4g}) -> "
                         f"checkpoint step {r['checkpoint_step']}, {r['batches_skipped']} batches skipped"
                         for r in self.rewinds) or "none"
        last = ckpt_lib.latest_checkpoint(trainer.run_dir)
        msg = (f"{why}; stopping without saving. Rewinds made ({len(self.rewinds)}): {made}. Last good checkpoint: "
               f"{last or 'none'}. {divergence_advice()} Or allow more rewinds with train.max_rewinds.")
        if trainer.accelerator.is_main_process:
            spike = spike or {}
            value = spike.get("value", math.nan)
            loss, gn = (value, math.nan) if spike.get("series") == "loss" else (math.nan, value)
            RunDir(trainer.run_dir).write_divergence(
                Divergence(step=spike.get("step"), reason=spike.get("series", ""), loss=loss, grad_norm=gn,
                           last_checkpoint=str(last) if last else None, message=msg))
        raise TrainingDiverged(msg)

    def rewind(self, trainer):
        """Restore the last checkpoint before the pending spike; returns the new batch iterator."""
        spike, self.pending = self.pending, None
        what = f"{spike['series']} {spike['value']:.4g} > {spike['threshold']:.4g}"
        if len(self.rewinds) >= self.max_rewinds:
            self._stop(trainer, f"on_spike=rewind: spike at step {spike['step']} ({what}) after "
                                f"{len(self.rewinds)} rewinds, the train.max_rewinds={self.max_rewinds} allowed", spike)
        last = ckpt_lib.latest_checkpoint(trainer.run_dir)
        if last is None:
            self._stop(trainer, f"on_spike=rewind: spike at step {spike['step']} ({what}) before the first "
                                "checkpoint: nothing to rewind to (lower checkpoint.every)", spike)
        c = ckpt_lib.read_state(last)["step"]
        record = {**spike, "event": "rewind", "batches_skipped": self.skip_batches, "checkpoint_step": c,
                  "advance": spike["step"] - 1 - c + self.skip_batches}
        acc = trainer.accelerator
        if acc.is_main_process:
            write_rewinds(trainer.run_dir, self.rewinds + [record])
            print(f"[mhc-lm] spike at step {spike['step']} ({what}): rewinding to {last}, data on by "
                  f"{record['advance']} batches (rewind {len(self.rewinds) + 1} of at most {self.max_rewinds})",
                  flush=True)
        acc.wait_for_everyone()
        trainer.writer.close()  # metrics.jsonl is rewritten (cut at c) below
        trainer._resume(last)  # the states, loaded exactly as a restarted run loads them
        if acc.is_main_process:
            trainer.writer.truncate_after(trainer.step)  # as a restarted run cuts its log
        self.after_resume(trainer)
        trainer._fp16_overflows = 0
        for cb in trainer.callbacks:
            hook = getattr(cb, "on_rewind", None)
            if hook is not None:
                hook(trainer)
        return iter(trainer.data.train_loader)

    def after_resume(self, trainer) -> None:
        """At the resumed step r (0 = a new run): keep the rewinds made before r, apply those made to
        checkpoint r (data position, their metrics rows), forget those of a later checkpoint."""
        r = trainer.step
        records = read_rewinds(trainer.run_dir)
        kept = [rec for rec in records if rec["checkpoint_step"] <= r]
        trainer.accelerator.wait_for_everyone()  # every rank has read the file before it changes
        if kept != records and trainer.accelerator.is_main_process:
            write_rewinds(trainer.run_dir, kept)
        self.rewinds = kept
        advance = sum(rec["advance"] for rec in kept if rec["checkpoint_step"] == r)
        if advance:
            batches = iter(trainer.data.train_loader)
            for _ in range(advance * trainer.accumulation):
                next(batches)
        for rec in kept:
            if rec["checkpoint_step"] <= r < rec["step"]:  # its row was cut with the log at r
                trainer.writer.write({k: rec[k] for k in EVENT_KEYS})
