"""The stability callbacks inside real (tiny, in-process) training runs."""

import json
from pathlib import Path

import pytest

from mhc_lm.metrics import MetricsConfig, StabilityCallback, build_callbacks
from mhc_lm.config_utils import ConfigError
from mhc_lm.train import Trainer
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import DieAt, Killed, one_thread, tiny_config, toy_data


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def train(run_dir, mode, enabled, **train):
    metrics = {"enabled": enabled, "probe_every": 4, "spike_min_history": 2, "spike_window": 4}
    cfg = tiny_config(run_dir, mode, metrics=metrics, train={"max_steps": 6, **train})
    trainer = Trainer(cfg, data=toy_data(cfg), callbacks=build_callbacks(cfg))
    trainer.fit()
    return trainer, read_metrics(Path(run_dir) / "metrics.jsonl")


def test_probes_logged_and_training_unchanged(tmp_path):
    _, on = train(tmp_path / "on", "mhc", True)
    _, off = train(tmp_path / "off", "mhc", False)
    train_on = [r for r in on if "loss" in r]
    train_off = [r for r in off if "loss" in r]
    # the probe (forward + autograd.grad on the probe batch) leaves the training trajectory bit-identical
    assert [r["loss"] for r in train_on] == [r["loss"] for r in train_off]
    assert [r["grad_norm"] for r in train_on] == [r["grad_norm"] for r in train_off]
    for r in train_on:
        assert {"spike/loss", "spike/loss_count", "spike/loss_score", "spike/grad_norm"} <= r.keys()
        assert r["spike/loss"] in (0.0, 1.0)
    assert "loss_volatility" in train_on[-1]
    probed = [r["step"] for r in train_on if "vanished/1e-04" in r]
    assert probed == [4, 6]  # every probe_every steps and at the last step
    init = [r for r in on if r["step"] == 0]  # probe of the model at init: its own line, no training keys
    assert len(init) == 1 and "vanished/1e-04" in init[0] and "loss" not in init[0]
    last = train_on[-1]
    assert {"amax/fwd/layer_00", "amax/bwd/layer_01", "amax/fwd/composite", "grad_std",
            "rms/act/layer_01", "rms/grad/layer_00"} <= last.keys()
    assert abs(last["amax/fwd/composite"] - 1) < 1e-3  # mHC: doubly stochastic


def test_standard_run_logs_identity_gain(tmp_path):
    _, records = train(tmp_path / "std", "standard", True, max_steps=4)
    last = [r for r in records if "loss" in r][-1]
    assert last["amax/fwd/composite"] == 1.0 and "amax/fwd/layer_00" not in last


def test_restore_from_log_after_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0 + 0.01 * (s % 2), "grad_norm": 0.5, "spike/loss_count": 2.0,
              "spike/grad_norm_count": 0.0} for s in range(1, 51)]
    lines.append({"step": 50, "val_loss": 1.0})
    lines.append({"step": 60, "loss": 99.0})  # after the resumed step: ignored
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cb = StabilityCallback(MetricsConfig(spike_window=16, spike_min_history=8))
    cb.restore(path, step=50)
    det = cb.detectors["loss"]
    assert list(det.history) == [1.0 + 0.01 * (s % 2) for s in range(35, 51)]
    assert det.count == 2 and det.evaluated == 42
    logs = {"step": 51, "loss": 5.0, "grad_norm": 0.5}
    cb.on_step_end(None, 51, logs)
    assert logs["spike/loss"] == 1.0 and logs["spike/loss_count"] == 3.0


def test_build_callbacks_and_config_validation():
    assert build_callbacks(MetricsConfig(enabled=False), None) == []
    assert [type(c).__name__ for c in build_callbacks(MetricsConfig(probe_every=0), None)] == ["StabilityCallback"]
    with pytest.raises(TypeError, match="RunConfig or MetricsConfig"):
        build_callbacks({"metrics": {}}, None)
    with pytest.raises(ConfigError, match="vanished_eps"):
        MetricsConfig(vanished_eps=[2.0])
    with pytest.raises(ConfigError, match="spike_min_history"):
        MetricsConfig(spike_window=8, spike_min_history=16)


def test_spike_state_survives_resume_with_sparse_logging(tmp_path):
    """log_every > 1: the metrics.jsonl cannot rebuild the history; the checkpointed state does."""
    def cfg(run_dir):
        return tiny_config(run_dir, "hc", train={"max_steps": 12},
                           metrics={"enabled": True, "probe_every": 0, "spike_window": 4, "spike_min_history": 2,
                                    "volatility_window": 4},
                           logging={"log_every": 3}, checkpoint={"every": 6})

    def trainer(run_dir, *extra):
        return Trainer(cfg(run_dir), data=toy_data(cfg(run_dir)), callbacks=[*extra, *build_callbacks(cfg(run_dir))])

    trainer(tmp_path / "ref").fit()
    with pytest.raises(Killed):
        trainer(tmp_path / "run", DieAt(9)).fit()
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000006" / "trainer_state.json").read_text())
    assert len(state["callbacks"]["stability"]["detectors"]["loss"]["history"]) == 4
    trainer(tmp_path / "run").fit()  # resumes at step 6

    def spikes(run_dir):
        keys = ("step", "loss", "spike/loss_count", "spike/loss_score", "spike/loss_z", "spike/grad_norm_count",
                "loss_volatility")
        return [{k: r.get(k) for k in keys} for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]

    ref, got = spikes(tmp_path / "ref"), spikes(tmp_path / "run")
    assert [r["step"] for r in got] == [3, 6, 9, 12]
    assert got == ref
    assert ref[-1]["spike/loss_z"] is not None
