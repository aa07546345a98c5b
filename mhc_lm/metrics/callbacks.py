"""Stability callbacks for the trainer (the `mhc_lm.train.callbacks.Callback` protocol, met by shape:
this package imports nothing of `mhc_lm.train`; launch/pretrain.py hands `build_callbacks(config)`
to the Trainer).

    StabilityCallback: every step, from the loss / grad-norm floats the trainer already has
        spike/loss, spike/loss_count, spike/loss_score, spike/loss_z,
        spike/grad_norm, spike/grad_norm_count, spike/grad_norm_score, loss_volatility
    ProbeCallback: every `probe_every` steps (and at the last step), on `trainer.probe_batch`
        amax/..., spectral/composite[_max], rms/act/..., rms/grad/..., vanished/..., grad_std, probe/loss
    UpdateRatioCallback: on the same steps, the update/parameter ratio of that step's update
        update_ratio/layer_XX, update_ratio/other, update_ratio/global

No extra host sync per step (the spike rule runs on Python floats); the probe syncs once per
probe. Both run on every rank (the probe forward may be collective under ZeRO-3 / FSDP); only
the main process writes the entries, which the trainer does. On resume the spike history and
counts are rebuilt from run_dir/metrics.jsonl.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from mhc_lm.run_dir import iter_jsonl

from .config import MetricsConfig
from .non_finite import probe_or_diverge
from .probe import eval_mode, probe_model
from .spikes import SpikeDetector, VolatilityTracker
from .update import NOT_MANAGED, deepspeed_fp32_piece, snapshot, update_ratios

SPIKE_SERIES = ("loss", "grad_norm")


class StabilityCallback:
    """Online spike detection (mean + k sigma of the previous window) and loss volatility."""

    def __init__(self, config: MetricsConfig):
        self.config = config
        self.detectors = {name: self._detector() for name in SPIKE_SERIES}
        self.volatility = VolatilityTracker(config.volatility_window)
        self._restored = False  # set by load_state_dict (a resumed checkpoint carried the state)

    def _detector(self) -> SpikeDetector:
        c = self.config
        return SpikeDetector(window=c.spike_window, sigma=c.spike_sigma, min_history=c.spike_min_history)

    state_key = "stability"

    def state_dict(self) -> dict:
        """Saved in every checkpoint (trainer_state.json), so a resumed run continues the exact rule."""
        return {"detectors": {n: d.state_dict() for n, d in self.detectors.items()},
                "volatility": self.volatility.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name, det in self.detectors.items():
            det.load_state_dict(state["detectors"][name])
        self.volatility.load_state_dict(state["volatility"])
        self._restored = True

    def on_train_begin(self, trainer) -> None:
        if self._restored:
            return
        path = Path(trainer.run_dir) / "metrics.jsonl"
        if getattr(trainer, "step", 0) > 0 and path.is_file():
            # A checkpoint without callback state (written by an older version): rebuild from the log.
            log_every = trainer.config.logging.log_every
            if log_every == 1:
                self.restore(path, trainer.step)
            elif trainer.accelerator.is_main_process:
                warnings.warn("metrics: the checkpoint holds no spike-detector state and logging.log_every="
                              f"{log_every} > 1, so the history cannot be rebuilt from metrics.jsonl; spike "
                              "detection restarts with an empty history", stacklevel=2)

    def restore(self, path: Path, step: int) -> None:
        """Refill histories from the logged series up to `step` (counts from the last logged totals).

        Exact only when every step was logged (logging.log_every == 1); the checkpointed state
        (`state_dict`) is used whenever it exists."""
        records = [rec for _, rec in iter_jsonl(path) if rec.get("step", 0) <= step and "loss" in rec]
        for name, det in self.detectors.items():
            values = [float(r[name]) for r in records if isinstance(r.get(name), (int, float))]
            det.history.extend(values[-det.window:])
            last = next((r for r in reversed(records) if f"spike/{name}_count" in r), None)
            if last is not None:
                det.count = int(last[f"spike/{name}_count"])
            det.evaluated = max(step - det.min_history, det.count)  # every step is fed, logged or not
        for r in records[-self.config.volatility_window:]:
            if isinstance(r.get("loss"), (int, float)):
                self.volatility.update(float(r["loss"]))

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        for name, det in self.detectors.items():
            value = logs.get(name)
            if value is None:
                continue
            is_spike, z = det.update(float(value))
            logs[f"spike/{name}"] = float(is_spike)
            logs[f"spike/{name}_count"] = float(det.count)
            logs[f"spike/{name}_score"] = det.score
            if name == "loss" and math.isfinite(z):
                logs["spike/loss_z"] = z
        if "loss" in logs:
            vol = self.volatility.update(float(logs["loss"]))
            if math.isfinite(vol):
                logs["loss_volatility"] = vol

    def on_train_end(self, trainer) -> None:
        pass


def _sum_over_ranks(acc):
    """reduce(tensor) -> its sum over ranks, or None in a single process (nothing to reduce)."""
    return (lambda t: acc.reduce(t, "sum")) if acc.num_processes > 1 else None


def _partitioned(trainer) -> str | None:
    """'ZeRO-3' / 'FSDP' when parameters are sharded across ranks, else None."""
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    if acc.distributed_type == DistributedType.FSDP:
        return "FSDP"
    if acc.distributed_type == DistributedType.DEEPSPEED:
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
            return "ZeRO-3"
    return None


class ProbeCallback:
    """Amax / RMS / vanished-gradient probe on the trainer's fixed validation batch."""

    def __init__(self, config: MetricsConfig):
        self.config = config
        self.gradients = config.probe_gradients

    def on_train_begin(self, trainer) -> None:
        sharding = _partitioned(trainer)
        if sharding and self.gradients:
            self.gradients = False
            if trainer.accelerator.is_main_process:
                warnings.warn(f"metrics: parameters are partitioned ({sharding}); the vanished-gradient, grad_std and "
                              "rms/grad probes are skipped (Amax and activation RMS are still logged). Run "
                              "`python -m evals.stability RUN_DIR` on the exported checkpoint instead.", stacklevel=2)
        log_every = trainer.config.logging.log_every
        if self.config.probe_every % log_every and trainer.accelerator.is_main_process:
            warnings.warn(f"metrics.probe_every={self.config.probe_every} is not a multiple of logging.log_every="
                          f"{log_every}: probes on unlogged steps are lost", stacklevel=2)
        writer = getattr(trainer, "writer", None)
        if getattr(trainer, "step", 0) == 0 and self.config.probe_at_init and self.due(trainer, 0) and writer:
            metrics = self.probe(trainer)  # the model at init: a line {"step": 0, probe values...}
            if trainer.accelerator.is_main_process:
                writer.write({"step": 0, **metrics})

    def due(self, trainer, step: int) -> bool:
        every = self.config.probe_every
        return trainer.probe_batch is not None and every > 0 and (
            step % every == 0 or step == trainer.config.train.max_steps)

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        if self.due(trainer, step):
            logs.update(probe_or_diverge(self.probe, trainer, step))

    def probe(self, trainer) -> dict[str, float]:
        acc = trainer.accelerator
        reduce = _sum_over_ranks(acc)
        model = trainer.unwrapped_model
        # FSDP: outside its forward the root unit's parameters (embedding, final norm) are flat 1-D
        # shards, so the forward goes through the wrapped model, which gathers every unit in turn.
        # (ZeRO-3 gathers through hooks on the modules themselves: the unwrapped model works.)
        forward = trainer.model if _partitioned(trainer) == "FSDP" else None
        with eval_mode(model), acc.autocast():
            metrics = probe_model(model, trainer.probe_batch, eps=self.config.vanished_eps,
                                  exclude=self.config.vanished_exclude, amax=self.config.probe_amax,
                                  gradients=self.gradients, reduce_counts=reduce, forward_model=forward)
        return metrics

    def on_train_end(self, trainer) -> None:
        pass


class UpdateRatioCallback:
    """||delta theta|| / ||theta|| of the optimizer step that ends on each probe step.

    The parameters are copied at the end of the step before a probe step (one extra copy of the
    trainable parameters held for one step, on their device) and compared after it. Under
    DeepSpeed ZeRO-1/2 the copy is of this rank's fp32 master fragments (the module holds bf16
    copies under bf16) and the sums are all-reduced. Skipped when the parameters are partitioned
    (ZeRO-3 / FSDP: each rank holds a shard).
    """

    def __init__(self, config: MetricsConfig, probe: ProbeCallback):
        self.config = config
        self.probe = probe
        self.before: dict | None = None
        self.enabled = True
        self.master = None  # parameter -> fp32 master (piece) to measure; None: the parameter itself
        self.reduce = None

    def on_train_begin(self, trainer) -> None:
        if _partitioned(trainer):
            self.enabled = False
            return
        self.master, self.reduce = _fp32_masters(trainer.accelerator)
        self._maybe_snapshot(trainer, getattr(trainer, "step", 0))

    def _maybe_snapshot(self, trainer, step: int) -> None:
        due = self.probe.due(trainer, step + 1)
        self.before = snapshot(trainer.unwrapped_model, self.master) if due else None

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        if not self.enabled:
            return
        if self.before is not None and self.probe.due(trainer, step):
            logs.update(update_ratios(self.before, trainer.unwrapped_model, self.master, self.reduce))
        self._maybe_snapshot(trainer, step)

    def on_train_end(self, trainer) -> None:
        self.before = None


def _fp32_masters(acc):
    """(master, reduce) for `update_ratios`: under DeepSpeed the fp32 masters are pieces held by
    the optimizer on each rank (the module holds bf16 copies when bf16 is on), summed over ranks."""
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        return None, None
    def master(p):
        m = deepspeed_fp32_piece(p)
        if m is NOT_MANAGED:  # a replicated parameter: counted once (main process) in the sum over ranks
            return NOT_MANAGED if acc.is_main_process else None
        return m

    return master, _sum_over_ranks(acc)


def build_callbacks(config, trainer=None) -> list:
    """The stability callbacks for `Trainer(config, callbacks=...)` (config: RunConfig, or a
    MetricsConfig); `trainer` is unused (the callbacks meet it at `on_train_begin`)."""
    metrics = getattr(config, "metrics", config)
    if not isinstance(metrics, MetricsConfig):
        raise TypeError(f"build_callbacks: expected a RunConfig or MetricsConfig, got {type(config).__name__}")
    if not metrics.enabled:
        return []
    callbacks: list = [StabilityCallback(metrics)]
    if metrics.probe_every > 0:
        probe = ProbeCallback(metrics)
        callbacks.append(probe)
        if metrics.update_ratio:
            callbacks.append(UpdateRatioCallback(metrics, probe))
    return callbacks


__all__ = ["StabilityCallback", "ProbeCallback", "UpdateRatioCallback", "build_callbacks"]
