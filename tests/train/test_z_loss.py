"""optim.z_loss: the term against a by-hand formula, the logged value, every residual mode, and a
zero coefficient leaving training untouched."""

import math
from pathlib import Path

import pytest
import torch

from mhc_lm.train import BaseCallback, Trainer
from mhc_lm.train.run_log import read_metrics
from mhc_lm.train.z_loss import ZLoss, z_loss
from tests.train.helpers import one_thread, tiny_config, toy_data


def test_z_loss_matches_the_formula_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5) * 4
    labels = torch.tensor([[1, -100, 2], [0, 4, -100]])
    expected, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            if labels[b, t] != -100:
                log_z = math.log(sum(math.exp(float(v)) for v in logits[b, t]))
                expected += log_z ** 2
                count += 1
    assert z_loss(logits, labels, 1e-4).item() == pytest.approx(1e-4 * expected / count, rel=1e-6)
    assert z_loss(logits, labels, 0.0).item() == 0.0
    # its gradient pushes log Z to 0: d/dlogits = 2 coef log Z softmax / count
    x = logits.clone().requires_grad_(True)
    z_loss(x, labels, 1.0).backward()
    log_z = torch.logsumexp(logits, -1, keepdim=True)
    want = 2 * log_z * torch.softmax(logits, -1) * (labels != -100).unsqueeze(-1) / count
    assert torch.allclose(x.grad, want, atol=1e-6)


def run(tmp_path, name, mode="standard", coef=None, steps=3):
    optim = {} if coef is None else {"z_loss": coef}
    cfg = tiny_config(tmp_path / name, mode, train={"max_steps": steps, "eval_every": 0}, optim=optim)
    with one_thread():
        trainer = Trainer(cfg, data=toy_data(cfg))
        trainer.fit()
    return trainer, [r for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl") if "loss" in r]


def test_zero_coefficient_changes_nothing(tmp_path):
    trainer, rows = run(tmp_path, "zero", coef=0.0)
    _, default = run(tmp_path, "default")
    assert not any(isinstance(cb, ZLoss) for cb in trainer.callbacks) and "z_loss" not in rows[0]
    assert [(r["loss"], r["grad_norm"]) for r in rows] == [(r["loss"], r["grad_norm"]) for r in default]


@pytest.mark.parametrize("mode", ["standard", "hc", "mhc", "grid"])
def test_z_loss_is_logged_and_trained_in_every_mode(tmp_path, mode):
    class FirstBatch(BaseCallback):  # the model at init and the first training micro-batches
        def on_train_begin(self, trainer):
            cfg = trainer.config
            loader = toy_data(cfg).train_loader
            it = iter(loader)
            self.batches = [next(it) for _ in range(cfg.train.batch_size // cfg.train.micro_batch_size)]
            with torch.no_grad():
                m = trainer.unwrapped_model
                self.expected = sum(z_loss(m(input_ids=b["input_ids"]).logits, b["labels"], 1e-2).item()
                                    for b in self.batches) / len(self.batches)

    cfg = tiny_config(tmp_path / "z", mode, train={"max_steps": 3, "eval_every": 0}, optim={"z_loss": 1e-2})
    first = FirstBatch()
    with one_thread():
        Trainer(cfg, data=toy_data(cfg), callbacks=[first]).fit()
    rows = [r for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl") if "loss" in r]
    assert rows[0]["z_loss"] == pytest.approx(first.expected, rel=1e-5)  # step 1: the model at init
    assert all(r["z_loss"] > 0 and math.isfinite(r["z_loss"]) for r in rows)
    _, plain = run(tmp_path, "plain", mode)
    assert rows[0]["loss"] == plain[0]["loss"]  # the logged loss is the cross-entropy alone
    assert rows[0]["grad_norm"] != plain[0]["grad_norm"]  # the z term is trained on
