"""val_loss is measured on the same windows whatever the micro-batch size (and, by the same
layout, the world size): train.eval_batches counts global batches."""

import torch

from mhc_lm.train import Trainer
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import tiny_config, toy_data


def val_losses(run_dir, micro):
    cfg = tiny_config(run_dir, "mhc", train={"max_steps": 4, "batch_size": 4, "micro_batch_size": micro,
                                             "eval_every": 2, "eval_batches": 2})
    trainer = Trainer(cfg, data=toy_data(cfg))
    trainer.fit()
    records = read_metrics(run_dir / "metrics.jsonl")
    return trainer, [r["val_loss"] for r in records if "val_loss" in r], [r["loss"] for r in records if "loss" in r]


def test_val_loss_does_not_depend_on_the_micro_batch_size(tmp_path):
    t1, val1, train1 = val_losses(tmp_path / "micro1", 1)
    t4, val4, train4 = val_losses(tmp_path / "micro4", 4)
    assert (t1.accumulation, t4.accumulation) == (4, 1)
    torch.testing.assert_close(torch.tensor(train1), torch.tensor(train4), rtol=1e-5, atol=0)
    assert len(val1) == len(val4) == 2
    torch.testing.assert_close(torch.tensor(val1), torch.tensor(val4), rtol=1e-5, atol=0)
