"""Replicate seeds: `train.seed` drives the training data order (unless data.order_seed is set);
the validation windows and the preparation do not depend on it."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from mhc_lm.data import WindowLoader
from mhc_lm.train.config import RunConfig, TrainConfig
from mhc_lm.train.data import build_data


class OneProcess:
    """The part of an Accelerator that build_data uses."""

    process_index, num_processes, is_main_process = 0, 1, True

    def main_process_first(self):
        return contextlib.nullcontext()


def bundle(prepared_cfg, seed: int, **data):
    data_cfg = dataclasses.replace(prepared_cfg, seq_len=16, **data)
    cfg = RunConfig(data=data_cfg, train=TrainConfig(seed=seed, batch_size=4, micro_batch_size=4))
    return build_data(cfg, OneProcess())


def first_batches(loader, k: int = 4) -> torch.Tensor:
    return torch.stack([next(loader)["input_ids"] for _ in range(k)])


def test_two_seeds_give_different_orders_and_one_seed_repeats_exactly(prepared):
    _, cfg = prepared
    a, a_again, b = (first_batches(bundle(cfg, s).train_loader) for s in (0, 0, 1))
    assert torch.equal(a, a_again)
    assert not torch.equal(a, b)
    # the same windows in another order: only the order differs, not the data
    ra, rb = bundle(cfg, 0).train_loader, bundle(cfg, 1).train_loader
    assert sorted(ra._epoch_order(0).tolist()) == sorted(rb._epoch_order(0).tolist())


def test_validation_windows_do_not_depend_on_the_run_seed(prepared):
    _, cfg = prepared
    a, b = (first_batches(bundle(cfg, s).make_val_loader(), 2) for s in (0, 5))
    assert torch.equal(a, b)


def test_explicit_order_seed_fixes_the_order_across_run_seeds(prepared):
    _, cfg = prepared
    a = first_batches(bundle(cfg, 0, order_seed=7).train_loader)
    b = first_batches(bundle(cfg, 1, order_seed=7).train_loader)
    assert torch.equal(a, b)
    assert torch.equal(a, first_batches(bundle(cfg, 7).train_loader))  # order_seed=7 is train.seed=7's order


def test_order_seed_is_not_part_of_the_preparation(prepared):
    from mhc_lm.data.prepare import FINGERPRINT_KEYS

    assert "order_seed" not in FINGERPRINT_KEYS and "seed" in FINGERPRINT_KEYS


def test_a_checkpoint_from_before_order_seed_resumes_with_its_saved_seed(prepared):
    """Old loader states (no "order_seed_rule") were seeded with data.seed: the resumed run keeps it."""
    out_dir, _ = prepared
    from mhc_lm.data import PackedTokens

    ds = PackedTokens(out_dir, split="train")
    old = WindowLoader(ds, 16, 4, seed=0)
    next(old)
    state = old.state_dict()
    del state["order_seed_rule"]
    expected = first_batches(old, 3)
    resumed = WindowLoader(ds, 16, 4, seed=3)  # a new run's loader would now be seeded with train.seed
    with pytest.warns(UserWarning, match="before data.order_seed"):
        resumed.load_state_dict(state)
    assert torch.equal(first_batches(resumed, 3), expected)
    # a current state with another seed is still refused
    with pytest.raises(ValueError, match="seed"):
        WindowLoader(ds, 16, 4, seed=3).load_state_dict(WindowLoader(ds, 16, 4, seed=0).state_dict())


def test_validation_larger_than_the_val_split_warns(prepared):
    _, cfg = prepared
    windows = bundle(cfg, 0).make_val_loader().num_windows
    data_cfg = dataclasses.replace(cfg, seq_len=16)
    fits = RunConfig(data=data_cfg, train=TrainConfig(batch_size=4, micro_batch_size=4, eval_batches=windows // 4))
    repeats = RunConfig(data=data_cfg, train=TrainConfig(batch_size=4, micro_batch_size=4, eval_batches=windows // 4 + 1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_data(fits, OneProcess())
    with pytest.warns(UserWarning, match="windows repeat"):
        build_data(repeats, OneProcess())
