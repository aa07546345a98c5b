"""WindowLoader: determinism, disjoint ranks, exact resume, windows that match the token stream."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mhc_lm.data import PackedTokens, WindowLoader, prepare_data

from .conftest import small_config, write_txt


def take(loader, n):
    return [next(loader) for _ in range(n)]


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        for a, b in zip(batches_a, batches_b))


def test_windows_are_shifted_slices_of_the_stream(prepared):
    out_dir, _ = prepared
    ds = PackedTokens(out_dir, "train")
    T, B = 16, 4
    loader = WindowLoader(ds, seq_len=T, batch_size=B, seed=3)
    starts = loader.window_ids(0, 0) * T
    batch = next(loader)
    assert batch["input_ids"].shape == batch["labels"].shape == (B, T)
    assert batch["input_ids"].dtype == torch.long
    for row, s in enumerate(starts):
        window = torch.from_numpy(ds[int(s) : int(s) + T + 1].astype(np.int64))
        assert torch.equal(batch["input_ids"][row], window[:-1])
        assert torch.equal(batch["labels"][row], window[1:])
    assert loader.num_windows == (len(ds) - 1) // T


def test_same_seed_same_batches_other_seed_or_epoch_differs(prepared):
    ds = PackedTokens(prepared[0], "train")
    a = take(WindowLoader(ds, 16, 4, seed=1), 5)
    b = take(WindowLoader(ds, 16, 4, seed=1), 5)
    c = take(WindowLoader(ds, 16, 4, seed=2), 5)
    assert same(a, b) and not same(a, c)
    loader = WindowLoader(ds, 16, 4, seed=1)
    assert not np.array_equal(loader._epoch_order(0), loader._epoch_order(1).copy())


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_windows_each_epoch(prepared, world_size):
    ds = PackedTokens(prepared[0], "train")
    B = 3
    seen = []
    for rank in range(world_size):
        loader = WindowLoader(ds, 16, B, rank=rank, world_size=world_size, seed=7)
        ids = np.concatenate([loader.window_ids(0, b) for b in range(len(loader))])
        assert len(ids) == len(set(ids.tolist())) == len(loader) * B
        seen.append(set(ids.tolist()))
    union = set().union(*seen)
    assert sum(len(s) for s in seen) == len(union)  # pairwise disjoint
    assert len(union) == len(seen[0]) * world_size > 0.8 * WindowLoader(ds, 16, 1).num_windows


def test_global_batches_do_not_depend_on_the_rank_split(prepared):
    ds = PackedTokens(prepared[0], "train")
    one = WindowLoader(ds, 16, 4, rank=0, world_size=1, seed=5)
    two = [WindowLoader(ds, 16, 2, rank=r, world_size=2, seed=5) for r in range(2)]
    for _ in range(3):
        full = next(one)["input_ids"]
        halves = torch.cat([next(l)["input_ids"] for l in two])
        assert torch.equal(full, halves)


def test_epochs_end_on_optimizer_steps_whatever_the_micro_batch(prepared):
    """A step of 20 windows as 1 x 20, as 5 micro-batches of 4, or as 2 ranks x 2 micro-batches of 5:
    the same windows in every step, across epoch boundaries too."""
    ds = PackedTokens(prepared[0], "train")
    whole = WindowLoader(ds, 16, 20, seed=5, step_windows=20)
    micro = WindowLoader(ds, 16, 4, seed=5, step_windows=20)
    ranks = [WindowLoader(ds, 16, 5, rank=r, world_size=2, seed=5, step_windows=20) for r in range(2)]
    assert len(whole) * 20 == len(micro) * 4 == len(ranks[0]) * 10 == (whole.num_windows // 20) * 20
    assert whole.num_windows % 20 >= 4, "the fixture must leave a tail of a micro-batch, or the test proves nothing"
    for _ in range(2 * len(whole) + 1):  # past two epoch boundaries
        want = next(whole)["input_ids"]
        got_micro = torch.cat([next(micro)["input_ids"] for _ in range(5)])
        got_ranks = torch.cat([torch.cat([next(ranks[r])["input_ids"] for r in range(2)]) for _ in range(2)])
        assert torch.equal(got_micro, want)
        assert torch.equal(got_ranks, want)
    with pytest.raises(ValueError, match="multiple"):
        WindowLoader(ds, 16, 4, step_windows=10)


@pytest.mark.parametrize("where", ["mid_epoch", "next_epoch"])
def test_resume_reproduces_the_remaining_batches(prepared, where):
    ds = PackedTokens(prepared[0], "train")
    reference = WindowLoader(ds, 64, 16, seed=11)
    stop_after = 3 if where == "mid_epoch" else len(reference) + 2
    expected = take(reference, stop_after + 6)

    first = WindowLoader(ds, 64, 16, seed=11)
    take(first, stop_after)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON/YAML checkpoint
    assert state["epoch"] == (0 if where == "mid_epoch" else 1)
    resumed = WindowLoader(ds, 64, 16, seed=11)
    resumed.load_state_dict(state)
    assert same(take(resumed, 6), expected[stop_after:])


def test_resume_with_other_settings_is_refused(prepared):
    ds = PackedTokens(prepared[0], "train")
    state = WindowLoader(ds, 32, 4, seed=11).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        WindowLoader(ds, 16, 4, seed=11).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        WindowLoader(ds, 32, 4, seed=12).load_state_dict(state)


def test_split_smaller_than_a_batch_is_an_error(prepared):
    ds = PackedTokens(prepared[0], "val")
    with pytest.raises(ValueError, match="fewer than one global batch"):
        WindowLoader(ds, seq_len=len(ds), batch_size=1)


def test_windows_across_shard_boundaries(tmp_path, corpus_docs):
    write_txt(tmp_path / "txt", corpus_docs[:12])
    out_dir = prepare_data(small_config(tmp_path, shard_tokens=500, val_fraction=0.0), progress=False)
    ds = PackedTokens(out_dir, "train")
    assert len(ds.arrays) > 3 and all(len(a) == 500 for a in ds.arrays[:-1])
    stream = np.concatenate([np.asarray(a) for a in ds.arrays])
    loader = WindowLoader(ds, seq_len=37, batch_size=8, seed=0)  # 37 does not divide 500
    for _ in range(len(loader)):
        starts = loader.window_ids(loader.epoch, loader.batch_index) * 37
        batch = next(loader)
        expected = np.stack([stream[s : s + 38] for s in starts]).astype(np.int64)
        assert np.array_equal(batch["input_ids"].numpy(), expected[:, :-1])
        assert np.array_equal(batch["labels"].numpy(), expected[:, 1:])


def _poke(shard, offset: int, value: int) -> None:
    ids = np.memmap(shard, dtype=np.uint16, mode="r+")
    ids[offset] = value
    ids.flush()
    del ids


def test_ids_outside_the_vocab_are_an_error_naming_the_shard(prepared, tmp_path):
    out_dir = tmp_path / "copy"
    shutil.copytree(prepared[0], out_dir)
    shard = out_dir / "train_00000.bin"
    ds = PackedTokens(out_dir, "train")
    bad = len(ds) // 2
    _poke(shard, bad, 5000)  # vocab is 400; the file size stays right, so opening succeeds
    ds = PackedTokens(out_dir, "train")
    loader = WindowLoader(ds, seq_len=16, batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match=rf"train_00000.bin holds token id 5000 at token {bad} .*vocab_size=400"):
        for _ in range(len(loader)):
            next(loader)
    with pytest.raises(ValueError, match=rf"train_00000.bin holds token id 5000 at token {bad} "):
        ds[0 : len(ds)]
    assert ds[0:bad].max() < 400  # reads that miss the bad token are fine
    np.full(len(ds), 5000, np.uint16).tofile(shard)  # a whole shard of garbage
    with pytest.raises(ValueError, match=r"train_00000.bin holds token id 5000"):
        next(WindowLoader(PackedTokens(out_dir, "train"), seq_len=16, batch_size=4))


def test_out_of_vocab_id_in_a_later_shard_names_that_shard(tmp_path, corpus_docs):
    write_txt(tmp_path / "txt", corpus_docs[:12])
    out_dir = prepare_data(small_config(tmp_path, shard_tokens=500, val_fraction=0.0), progress=False)
    _poke(out_dir / "train_00002.bin", 7, 401)
    loader = WindowLoader(PackedTokens(out_dir, "train"), seq_len=37, batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match=r"train_00002.bin holds token id 401 at token 7 \(byte 14\)"):
        for _ in range(len(loader)):
            next(loader)
