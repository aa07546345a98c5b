"""evals.stability_study on real (toy) training runs: a diverged run is a result, listed at its step."""

import json

import pytest
import torch

from evals.stability_study import depth_tables, load, main, stress_tables
from mhc_lm.metrics import build_callbacks
from mhc_lm.train import Trainer, TrainingDiverged
from tests.train.helpers import one_thread, tiny_config, toy_data


def train(run_dir, mode, lr, seed=0, layers=2):
    cfg = tiny_config(run_dir, mode, optim={"lr": lr, "warmup_steps": 0}, model={"num_hidden_layers": layers},
                      train={"grad_clip": 0.0, "max_steps": 4, "seed": seed},
                      metrics={"enabled": True, "probe_every": 2}, checkpoint={"every": 0})
    with one_thread():
        Trainer(cfg, data=toy_data(cfg), callbacks=build_callbacks(cfg)).fit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    train(tmp / "hc_ok", "hc", 3e-3)
    with pytest.raises(TrainingDiverged):  # an absurd LR: the weights overflow and the gradient norm is NaN
        train(tmp / "hc_diverged", "hc", 1e30, seed=2)
    return tmp


def test_diverged_run_is_listed_with_its_step(runs, tmp_path):
    run = load(runs / "hc_diverged")
    assert run["diverged_at"] == 2 and "non-finite" in run["diverged"]
    text, data = stress_tables([load(runs / "hc_ok"), run])
    assert "| hc | 2 | 1 (step 2) |" in text  # the mode summary counts it
    assert "| step 2 |" in text  # and its own row says when
    assert data["modes"]["hc"]["diverged"] == {2: 2}
    args = ["stress", str(runs / "hc_ok"), str(runs / "hc_diverged"), "--out", str(tmp_path), "--prefix", "s"]
    assert main(args) == 0
    assert (tmp_path / "s.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "s.json").read_text())["runs"][1]["diverged_at"] == 2


def test_stress_row_reads_amax_and_val_loss(runs):
    text, data = stress_tables([load(runs / "hc_ok")])
    row = data["runs"][0]
    assert row["steps"] == 4 and row["diverged_at"] is None and torch.isfinite(torch.tensor(row["final_val_loss"]))
    assert row["max_amax_fwd_tokmax"] >= row["max_amax_fwd"] >= 1.0 - 1e-6  # hc's composite gain, from the probes


def test_depth_table_profiles(runs):
    text, data = depth_tables([load(runs / "hc_ok")])
    row = data["runs"][0]
    assert row["init_step"] == 0 and row["final_step"] == 4
    assert len(row["init_profile"]) == len(row["final_profile"]) == 2  # one RMS per layer
    assert row["init_first_last"] == pytest.approx(row["init_profile"][0] / row["init_profile"][1])
    assert "| hc | 1 |" in text
