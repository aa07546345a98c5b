"""No weight decay on norms, biases, gates and mixing parameters; warmup + cosine and WSD shapes."""

import math

import pytest

from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
from mhc_lm.train.config import OptimConfig
from mhc_lm.train.optim import build_optimizer, lr_factor, param_groups
from tests.train.helpers import TINY_MODEL


@pytest.mark.parametrize("mode", ["standard", "hc", "mhc", "grid"])
def test_decay_groups(mode):
    model = MhcLmForCausalLM(MhcLmConfig(**{**TINY_MODEL, "residual_mode": mode}))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    for name in no_decay["names"]:
        assert "mixing." in name or "norm" in name or name.endswith(".bias"), name
    for name in decay["names"]:
        assert "mixing." not in name and "norm" not in name, name
    assert any("mlp.gate_proj" in n for n in decay["names"]), "gate_proj is a matrix: it is decayed"
    assert "model.embed_tokens.weight" in decay["names"]
    if mode in ("hc", "mhc"):
        mixing = [n for n, _ in model.named_parameters() if "mixing." in n]
        assert mixing and set(mixing) <= set(no_decay["names"])
    total = sum(p.numel() for p in model.parameters())
    opt = build_optimizer(model, OptimConfig())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == total  # each parameter once


def test_warmup_cosine():
    cfg = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
    assert f[99] == pytest.approx(0.1)  # the last step that runs is at min_lr
    assert lr_factor(100, cfg, 100) == pytest.approx(0.1)


def test_wsd():
    cfg = OptimConfig(schedule="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    f = [lr_factor(s, cfg, 100) for s in range(100)]
    assert f[10:80] == [1.0] * 70, "stable phase"
    assert f[99] == pytest.approx(0.0) and f[90] == pytest.approx(0.45)
    assert all(a > b for a, b in zip(f[80:], f[81:]))


def test_glue_fine_tuning_decays_by_the_pretraining_rule():
    """One decay rule (mhc_lm/train/optim.py) for pretraining and GLUE fine-tuning: no decay on norms,
    gates, biases and mixing parameters; the embedding and the new classification head are decayed
    (the fine-tuning copy of the rule once left the embedding undecayed)."""
    import evals.glue.finetune as finetune
    from mhc_lm.model import MhcLmForSequenceClassification
    from mhc_lm.train.optim import optimizer_groups

    assert finetune.optimizer_groups is optimizer_groups  # finetune_task_seed builds its AdamW from it
    model = MhcLmForSequenceClassification(MhcLmConfig(**{**TINY_MODEL, "residual_mode": "mhc", "num_labels": 3}))
    decay, no_decay = optimizer_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0) and set(decay) == {"params", "weight_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, free = {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}
    assert {"model.embed_tokens.weight", "score.weight"} <= decayed
    assert any(n.endswith("q_proj.weight") for n in decayed) and any("gate_proj" in n for n in decayed)
    mixing = {n for n in names.values() if "mixing." in n}
    norms = {n for n in names.values() if "norm" in n}
    assert mixing and norms and (mixing | norms) <= free
    assert free | decayed == set(names.values()) and not free & decayed
