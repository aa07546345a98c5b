"""Sanctioned resume with changed settings (--resume-with / checkpoint.resume_with): refused without,
in effect and recorded in meta.json with, and the divergence advice names only what it accepts."""

import json
from pathlib import Path

import pytest

from mhc_lm.config_utils import ConfigError, save_config
from mhc_lm.train import Trainer
from mhc_lm.train.optim import lr_factor
from mhc_lm.train.resume_with import SANCTIONED, divergence_advice, parse_cli
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import tiny_config, toy_data

REPO = Path(__file__).resolve().parents[2]


def fit(cfg):
    trainer = Trainer(cfg, data=toy_data(cfg))
    return trainer, trainer.fit()


def lrs(run_dir):
    return {r["step"]: r["lr"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "lr" in r}


def test_a_changed_lr_is_refused_unless_sanctioned_then_in_effect_and_recorded(tmp_path):
    run_dir = tmp_path / "run"
    fit(tiny_config(run_dir, train={"max_steps": 4}))  # checkpoint at 4
    longer = {"max_steps": 8}
    with pytest.raises(ConfigError, match=r"optim.lr: 0.003 -> 0.001.*--resume-with optim.lr=VALUE"):
        fit(tiny_config(run_dir, train=longer, optim={"lr": 1e-3}))
    cfg = tiny_config(run_dir, train=longer, optim={"lr": 1e-3}, checkpoint={"resume_with": ["optim.lr"]})
    trainer, status = fit(cfg)
    assert status == "completed"
    got = lrs(run_dir)
    assert got[5] == pytest.approx(1e-3 * lr_factor(4, cfg.optim, 8))  # the new peak from the resumed step on
    assert got[4] == pytest.approx(3e-3 * lr_factor(3, cfg.optim, 4))  # the steps before it keep theirs
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["resumed_with"] == [{"step": 4, "changes": {"optim.lr": [3e-3, 1e-3]}}]
    # a plain resume of the changed run keeps its history and the new lr
    trainer, _ = fit(tiny_config(run_dir, train={"max_steps": 10}, optim={"lr": 1e-3}))
    assert json.loads((run_dir / "meta.json").read_text())["resumed_with"] == meta["resumed_with"]
    assert lrs(run_dir)[9] == pytest.approx(1e-3 * lr_factor(8, cfg.optim, 10))


def test_every_sanctioned_change_is_accepted_and_others_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    fit(tiny_config(run_dir, train={"max_steps": 4}))
    changed = {"optim.lr": 1e-3, "optim.warmup_steps": 5, "optim.min_lr_ratio": 0.5, "optim.z_loss": 1e-4,
               "train.grad_clip": 0.5}
    assert set(changed) == set(SANCTIONED)
    sections = {}
    for key, value in changed.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    train = {**sections.pop("train"), "max_steps": 5}
    _, status = fit(tiny_config(run_dir, train=train, checkpoint={"resume_with": list(changed)}, **sections))
    assert status == "completed"
    with pytest.raises(ConfigError, match="optim.beta1 cannot be changed on resume"):
        tiny_config(run_dir, checkpoint={"resume_with": ["optim.beta1"]})
    for key in SANCTIONED:
        assert key in divergence_advice()


def test_cli_resume_with(tmp_path, capsys):
    assert parse_cli(["optim.lr=1e-3", "train.grad_clip=1"]) == (["optim.lr=1e-3", "train.grad_clip=1"],
                                                                  ["optim.lr", "train.grad_clip"])
    for bad in (["optim.lr"], ["optim.beta2=0.9"]):
        with pytest.raises(ConfigError):
            parse_cli(bad)
    import sys

    sys.path.insert(0, str(REPO / "launch"))
    from pretrain import main

    cfg = tmp_path / "c.yaml"
    save_config(tiny_config(tmp_path / "run"), cfg)
    assert main(["--config", str(cfg), "--resume-with", "optim.beta1=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.beta1 cannot be changed on resume" in err[0]
    assert not (tmp_path / "run").exists()
