"""Update/parameter ratio: known answers, and the callback inside a real tiny run."""

import math

import pytest
import torch
from torch import nn

from mhc_lm.metrics import build_callbacks, MetricsConfig, snapshot, update_ratios
from mhc_lm.metrics.update import group_of
from mhc_lm.train import Trainer
from mhc_lm.train.config import build_model_config
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import tiny_config, toy_data


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)])
        self.model.norm = nn.Linear(1, 1, bias=False)


def test_group_names():
    assert group_of("model.layers.3.attn.q_proj.weight") == "layer_03"
    assert group_of("layers.12.mlp.weight") == "layer_12"
    assert group_of("model.embed_tokens.weight") == "other"
    assert group_of("lm_head.weight") == "other"


@torch.no_grad()
def test_known_answer():
    m = Toy()
    m.model.layers[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # norm 5
    m.model.layers[1].weight.copy_(torch.ones(2, 2))  # norm 2
    m.model.norm.weight.fill_(2.0)  # norm 2
    before = snapshot(m)
    m.model.layers[0].weight.add_(torch.tensor([[0.0, 0.5], [0.0, 0.0]]))  # |delta| 0.5
    m.model.norm.weight.fill_(2.2)  # |delta| 0.2
    r = update_ratios(before, m)
    assert r["update_ratio/layer_00"] == pytest.approx(0.1)
    assert r["update_ratio/layer_01"] == 0.0
    assert r["update_ratio/other"] == pytest.approx(0.1)
    assert r["update_ratio/global"] == pytest.approx(math.sqrt(0.25 + 0.04) / math.sqrt(25 + 4 + 4))
    assert set(r) == {"update_ratio/layer_00", "update_ratio/layer_01", "update_ratio/other", "update_ratio/global"}


class Recorder:
    """Keeps a copy of the parameters after every step (to recompute the ratio independently)."""

    def __init__(self):
        self.params = {}

    def on_train_begin(self, trainer):
        self.params[trainer.step] = snapshot(trainer.unwrapped_model)

    def on_step_end(self, trainer, step, logs):
        self.params[step] = snapshot(trainer.unwrapped_model)

    def on_train_end(self, trainer):
        pass


def test_callback_in_a_real_run(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, "mhc", metrics={"enabled": True, "probe_every": 3}, train={"max_steps": 7})
    rec = Recorder()
    Trainer(cfg, data=toy_data(cfg), callbacks=[rec, *build_callbacks(cfg)]).fit()
    lines = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    logged = {r["step"]: r for r in lines if "update_ratio/global" in r}
    assert sorted(logged) == [3, 6, 7]  # the probe steps (every 3 and the last)
    for step, r in logged.items():
        a, b = rec.params[step - 1], rec.params[step]
        num = sum(float((b[n].double() - a[n].double()).pow(2).sum()) for n in a)
        den = sum(float(a[n].double().pow(2).sum()) for n in a)
        assert r["update_ratio/global"] == pytest.approx(math.sqrt(num / den), rel=1e-5)
        layers = [v for k, v in r.items() if k.startswith("update_ratio/layer_")]
        assert len(layers) == build_model_config(cfg.model).num_hidden_layers
        assert all(0 < v < 1 for v in layers)


def test_disabled_by_config():
    names = [type(c).__name__ for c in build_callbacks(MetricsConfig(update_ratio=False), None)]
    assert names == ["StabilityCallback", "ProbeCallback"]
    names = [type(c).__name__ for c in build_callbacks(MetricsConfig(), None)]
    assert names == ["StabilityCallback", "ProbeCallback", "UpdateRatioCallback"]
