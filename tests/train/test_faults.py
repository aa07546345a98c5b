"""Faults end in the documented exit codes: divergence found anywhere (the probe included) is
exit 3 with DIVERGED; a full disk or a read-only run directory is exit 2 with one line naming
the path and the last complete checkpoint, leaves no partial files, and a rerun after the space
is freed resumes bit-exactly."""

import errno
import json

import pytest

from mhc_lm.train import Trainer, TrainingDiverged
from mhc_lm.train import checkpoint as ckpt_lib
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import tiny_config, toy_data


def run(cfg):
    return Trainer(cfg, data=toy_data(cfg)).fit()


def test_non_finite_values_in_the_probe_are_a_divergence(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, "mhc", train={"max_steps": 4, "grad_clip": 0.0}, optim={"lr": 1e6, "warmup_steps": 0},
                      metrics={"enabled": True, "probe_every": 1}, checkpoint={"every": 0, "save_at_end": False})
    with pytest.raises(TrainingDiverged, match="non-finite"):
        run(cfg)
    assert "non-finite" in (run_dir / "DIVERGED").read_text()
    assert not ckpt_lib.complete_checkpoints(run_dir)
