"""Mixing recompute in the trainer (issue 12): a run with recompute on resumes from a checkpoint
bit for bit, and its losses equal the run without recompute, also under layer checkpointing."""

from pathlib import Path

import pytest

from mhc_lm.train import Trainer
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import DieAt, Killed, tiny_config, toy_data


def _run(cfg, callbacks=None):
    return Trainer(cfg, data=toy_data(cfg), callbacks=callbacks).fit()


def _losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("mode,recompute", [("mhc", "block"), ("hc", "sublayer")])
def test_resume_with_recompute_is_bit_exact(tmp_path, mode, recompute):
    model = {"mixing_recompute": recompute, **({"mixing_recompute_layers": 1} if recompute == "block" else {})}
    ref = tiny_config(tmp_path / "ref", mode, model=model, train={"max_steps": 6}, checkpoint={"every": 3})
    resumed = tiny_config(tmp_path / "run", mode, model=model, train={"max_steps": 6}, checkpoint={"every": 3})
    plain = tiny_config(tmp_path / "plain", mode, train={"max_steps": 6}, checkpoint={"every": 3})
    assert _run(ref) == "completed"
    with pytest.raises(Killed):
        _run(resumed, callbacks=[DieAt(5)])
    assert _run(resumed) == "completed"  # resumes at the step-3 checkpoint
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    assert _run(plain) == "completed"  # recompute changes no bit of the training
    assert _losses(tmp_path / "plain") == _losses(tmp_path / "ref")


def test_recompute_under_layer_checkpointing_equals_plain(tmp_path):
    runs = {}
    for name, model, train in (("plain", {}, {}),
                               ("both", {"mixing_recompute": "block"}, {"activation_checkpointing": True})):
        cfg = tiny_config(tmp_path / name, "mhc", model=model, train={"max_steps": 3, **train})
        assert _run(cfg) == "completed"
        runs[name] = _losses(tmp_path / name)
    assert runs["both"] == runs["plain"]
