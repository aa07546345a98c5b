"""train.on_spike on induced spikes (bad batches of the toy stream, tests/train/spike_helpers.py):
none diverges, skip drops exactly the spiking updates, rewind restores and moves the data on,
a kill right after a rewind resumes bit for bit, max_rewinds is honoured."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhc_lm.config_utils import ConfigError, save_config
from mhc_lm.metrics.spikes import SpikeDetector
from mhc_lm.train import BaseCallback, Trainer, TrainingDiverged
from mhc_lm.train.run_log import read_metrics
from mhc_lm.train.skip_step import DeviceSpikeDetector, SkipStepAdamW
from mhc_lm.train.spike_policy import EVENT_KEYS, read_rewinds
from tests.train.helpers import one_thread, tiny_config
from tests.train.spike_helpers import PoisonHook, poisoned_data

REPO = Path(__file__).resolve().parents[2]
BAD = {11: "spike", 15: "nan"}  # global batches: steps 12 (a large finite loss) and 16 (NaN)
TIMING = ("tokens_per_s", "step_time_s", "mem_rss_gb", "mem_gb", "mem_reserved_gb", "mfu")


def spike_config(run_dir, policy, mode="standard", **train):
    return tiny_config(run_dir, mode, train={"max_steps": 20, "eval_every": 0, "on_spike": policy, **train},
                       metrics={"enabled": False, "spike_window": 8, "spike_min_history": 4, "spike_sigma": 6.0},
                       checkpoint={"every": 4, "keep_last": 2})


def fit(cfg, bad=BAD, callbacks=()):
    with one_thread():
        trainer = Trainer(cfg, data=poisoned_data(cfg, bad), callbacks=[PoisonHook(), *callbacks])
        return trainer, trainer.fit()


def records(run_dir):
    return read_metrics(Path(run_dir) / "metrics.jsonl")


def events(run_dir):
    return [r for r in records(run_dir) if "event" in r]


# ------------------------------------------------------------------ the device pieces
def test_skip_adamw_equals_adamw_and_a_skipped_step_changes_nothing():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
    b.load_state_dict(a.state_dict())
    groups = lambda m: [{"params": [m.weight], "weight_decay": 0.1}, {"params": [m.bias], "weight_decay": 0.0}]
    ref = torch.optim.AdamW(groups(a), lr=1e-2, betas=(0.9, 0.95))
    opt = SkipStepAdamW(groups(b), lr=1e-2, betas=(0.9, 0.95))
    x = torch.randn(4, 6)
    for _ in range(3):  # not skipped: the same update as AdamW, bit for bit
        for m, o in ((a, ref), (b, opt)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
        ref.step()
        opt.skip = torch.tensor(False)
        opt.step()
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    moments = [opt.state[p]["exp_avg"].clone() for p in (b.weight, b.bias)]
    b.weight.grad.fill_(float("nan"))  # a NaN gradient must not leak through the mask
    opt.skip = torch.tensor(True)
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())
    assert all(torch.equal(m, opt.state[p]["exp_avg"]) for m, p in zip(moments, (b.weight, b.bias)))
    assert opt.state[b.weight]["step"].item() == 4 and opt.skip is None  # the flag is used once
    ref.load_state_dict(opt.state_dict())  # one state layout: AdamW loads it


def test_device_detector_decides_as_the_spike_detector():
    g = torch.Generator().manual_seed(0)
    values = (torch.randn(60, generator=g) * 0.1 + 3).tolist()
    values[20], values[35], values[36], values[50] = 9.0, float("nan"), 7.0, float("inf")
    host = SpikeDetector(window=8, sigma=3.0, min_history=4)
    dev = DeviceSpikeDetector(window=8, sigma=3.0, min_history=4, device="cpu")
    flags = []
    for i, v in enumerate(values):
        expected, _ = host.update(v)
        spike, threshold = dev.update(torch.tensor(v))
        assert bool(spike) == expected, i
        flags.append(expected)
        if i == 30:
            state = dev.state_dict()
            assert state["history"] == list(host.history)
            fresh = DeviceSpikeDetector(window=8, sigma=3.0, min_history=4, device="cpu")
            fresh.load_state_dict(state)
            dev = fresh
    assert {20, 35, 36, 50} <= {i for i, f in enumerate(flags) if f}  # the planted ones (and both agree on all)
    assert math.isnan(DeviceSpikeDetector(8, 3.0, 4, "cpu").update(torch.tensor(1.0))[1])  # not armed: no threshold


@pytest.mark.gpu
def test_skip_decision_and_masked_step_need_no_host_sync_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = torch.nn.Linear(64, 64).cuda()
    opt = SkipStepAdamW(model.parameters(), lr=1e-3)
    det = DeviceSpikeDetector(window=8, sigma=3.0, min_history=4, device="cuda")
    x = torch.randn(16, 64, device="cuda")
    for i in range(12):
        opt.zero_grad()
        loss = model(x).pow(2).mean() * (100.0 if i == 10 else 1.0)
        loss.backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any device -> host copy now raises
        try:
            spike, _ = det.update(loss.detach())
            opt.skip = spike
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert int(det.count) == 1


# ------------------------------------------------------------------ the policies in a run
def test_skip_drops_exactly_the_spiking_updates(tmp_path):
    class Params(BaseCallback):
        def __init__(self):
            self.after = {}

        def on_step_end(self, trainer, step, logs):
            self.after[step] = [p.detach().clone() for p in trainer.unwrapped_model.parameters()]

    spy = Params()
    trainer, status = fit(spike_config(tmp_path / "run", "skip"), callbacks=[spy])
    assert status == "completed" and trainer.step == 20
    ev = events(tmp_path / "run")
    assert [(e["step"], e["event"], e["batches_skipped"]) for e in ev] == [(12, "skip", 1), (16, "skip", 1)]
    assert all(set(e) == set(EVENT_KEYS) for e in ev)
    assert ev[0]["value"] > ev[0]["threshold"] > 0 and math.isnan(ev[1]["value"])
    for step in (12, 16):  # the spiking steps left every parameter as it was
        assert all(torch.equal(a, b) for a, b in zip(spy.after[step - 1], spy.after[step]))
    assert not all(torch.equal(a, b) for a, b in zip(spy.after[12], spy.after[13]))
    losses = [r["loss"] for r in records(tmp_path / "run") if "loss" in r]
    assert len(losses) == 20 and math.isfinite(losses[-1]) and max(losses[16:]) < 6


def test_skip_stops_after_twenty_non_finite_steps_in_a_row(tmp_path):
    bad = {b: "nan" for b in range(4, 30)}  # steps 5.. are all NaN
    with pytest.raises(TrainingDiverged, match="step 24"):
        fit(spike_config(tmp_path / "run", "skip", max_steps=30), bad=bad)
    assert [e["step"] for e in events(tmp_path / "run")] == list(range(5, 24))  # 19 skipped, the 20th stops


def test_none_keeps_going_on_a_finite_spike_and_diverges_on_nan(tmp_path):
    with pytest.raises(TrainingDiverged, match="step 16"):
        fit(spike_config(tmp_path / "run", "none"))
    assert not events(tmp_path / "run")  # none only logs


def test_rewind_restores_moves_the_data_on_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    trainer, status = fit(spike_config(run_dir, "rewind"))
    assert status == "completed" and trainer.step == 20
    ev = events(run_dir)
    # step 12 (batch 11) spikes -> back to step 8, data at batch 12; steps 9-11 take batches 12-14 and
    # step 12 meets batch 15 (NaN) -> back to step 8 again, data at batch 16
    assert [(e["step"], e["event"], e["batches_skipped"]) for e in ev] == [(12, "rewind", 1), (12, "rewind", 1)]
    assert ev[0]["value"] > ev[0]["threshold"] and math.isnan(ev[1]["value"])
    assert [(r["checkpoint_step"], r["advance"]) for r in read_rewinds(run_dir)] == [(8, 4), (8, 4)]
    rows = records(run_dir)
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 21))  # the cut trajectory is gone from the log
    assert all(math.isfinite(r["loss"]) and r["loss"] < 6 for r in train)
    assert [i for i, r in enumerate(rows) if "event" in r] == [8, 9]  # right after step 8's line


def test_max_rewinds_stops_with_the_rewinds_listed(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"max_rewinds=1") as err:
        fit(spike_config(run_dir, "rewind", max_rewinds=1))
    from mhc_lm.run_dir import RunDir

    record = RunDir(run_dir).divergence()
    text = record.message
    assert "Rewinds made (1): step 12 (loss" in text and "checkpoint step 8" in text and "--resume-with" in text
    assert str(err.value) == text and (record.step, record.reason) == (12, "loss")  # the spike that found no rewind left
    assert [e["event"] for e in events(run_dir)] == ["rewind"]
    with pytest.raises(TrainingDiverged, match="Rewinds made \\(0\\)"):
        fit(spike_config(tmp_path / "zero", "rewind", max_rewinds=0))


def test_rewind_needs_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.every"):
        tiny_config(tmp_path / "run", train={"on_spike": "rewind"}, checkpoint={"every": 0})


# ------------------------------------------------------------------ processes: exit code, kill -9
def launch(cfg_path, run_env=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "SPIKE_BAD": "11:spike,15:nan",
           **(run_env or {})}
    return subprocess.run([sys.executable, str(REPO / "tests" / "train" / "spike_run.py"), str(cfg_path)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def comparable(run_dir):
    """Every metrics.jsonl row without its timings, as JSON text (NaN == NaN there)."""
    return [json.dumps({k: v for k, v in r.items() if k not in TIMING}, sort_keys=True) for r in records(run_dir)]


def test_none_exits_3_and_a_kill_right_after_a_rewind_resumes_bit_exactly(tmp_path):
    none_cfg = tmp_path / "none.yaml"
    save_config(spike_config(tmp_path / "none", "none", max_steps=16), none_cfg)
    proc = launch(none_cfg)
    assert proc.returncode == 3, proc.stderr[-2000:]
    from mhc_lm.run_dir import RunDir

    assert RunDir(tmp_path / "none").divergence().step == 16

    paths = {}
    for name in ("ref", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        save_config(spike_config(tmp_path / name, "rewind", "hc", max_steps=14), paths[name])
    ref = launch(paths["ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    marker = tmp_path / "killed.marker"
    first = launch(paths["killed"], {"SPIKE_KILL_AFTER_REWIND": str(marker)})
    assert first.returncode == -9 and marker.is_file(), first.stderr[-2000:]
    assert len(read_rewinds(tmp_path / "killed")) == 1  # killed right after the first rewind
    again = launch(paths["killed"], {"SPIKE_KILL_AFTER_REWIND": str(marker)})  # the same command
    assert again.returncode == 0, again.stderr[-2000:]
    assert comparable(tmp_path / "killed") == comparable(tmp_path / "ref")
    assert len(events(tmp_path / "ref")) == 2
    assert json.dumps(read_rewinds(tmp_path / "killed")) == json.dumps(read_rewinds(tmp_path / "ref"))
    from safetensors.torch import load_file

    final = lambda name: load_file(str(tmp_path / name / "checkpoints" / "step_0000014" / "model.safetensors"))
    a, b = final("ref"), final("killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
