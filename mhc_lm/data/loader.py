"""WindowLoader: shuffled fixed-length windows over packed tokens, split across ranks, resumable.

Window k reads tokens [k*T, k*T + T + 1) of the split (T = seq_len), so consecutive windows
share one token and every token is a target exactly once per epoch:
input_ids = w[:-1], labels = w[1:]. Documents are packed back to back (each ends in EOS);
windows ignore document boundaries, as in GPT-2/nanoGPT pretraining.

Epoch e visits the windows in the order of a permutation drawn from (seed, e). Global batch
b is the slice perm[b*B*W : (b+1)*B*W] (B = per-rank batch, W = world size); rank r takes its
r-th block of B. Hence ranks never share a window within an epoch, and a run with W ranks of
batch B sees the same global batches as one rank with batch B*W. The tail of the permutation
that does not fill a global batch is skipped that epoch (it is a different tail next epoch).
With `step_windows` (the windows of one optimizer step: the global batch, accumulation
included) the epoch is cut at a multiple of it instead, so where an epoch ends, and hence every
later batch, does not depend on how a step is split into micro-batches and ranks.

State is (epoch, next batch index); `load_state_dict` restores it, so a resumed run yields
exactly the batches an uninterrupted run would have.

The trainer seeds the training loader with `data.order_seed`, which defaults to `train.seed`
(`DataConfig.order_seed_for`), so replicate seeds differ in data order as well as in
initialisation; the validation loader keeps `data.seed + 1`, the same windows for every run.
Checkpoints written before that change (state without "order_seed_rule") were seeded with
`data.seed`: resuming one keeps its saved seed, with a note, so the run continues unchanged.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .shards import PackedTokens

ORDER_SEED_RULE = 2  # state_dict marker: the loader seed is the run's data-order seed (data.order_seed / train.seed)


class WindowLoader:
    """Infinite iterator of {"input_ids", "labels"}: LongTensor (batch_size, seq_len) each."""

    def __init__(self, dataset: PackedTokens, seq_len: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, step_windows: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
        self.dataset, self.seq_len, self.batch_size = dataset, seq_len, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.num_windows = max(len(dataset) - 1, 0) // seq_len
        per_batch = batch_size * world_size
        if step_windows is not None and (step_windows < per_batch or step_windows % per_batch):
            raise ValueError(f"step_windows={step_windows} must be a multiple of batch_size x world_size = {per_batch}")
        unit = step_windows or per_batch
        self.batches_per_epoch = (self.num_windows // unit) * (unit // per_batch)
        if self.batches_per_epoch == 0:
            split = getattr(dataset, "split", "?")
            raise ValueError(
                f"split {split!r} has {len(dataset)} tokens = {self.num_windows} windows of seq_len+1={seq_len + 1}, "
                f"fewer than one global batch ({unit} windows). "
                "Fix: lower seq_len or batch_size, or give the split more text (data.val_fraction / data.val_files)."
            )
        self.epoch = 0
        self.batch_index = 0  # next batch within the epoch
        self._order_epoch = None
        self._order = None

    def __len__(self) -> int:
        """Batches per epoch (per rank)."""
        return self.batches_per_epoch

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            else:
                self._order = np.arange(self.num_windows)
            self._order_epoch = epoch
        return self._order

    def window_ids(self, epoch: int, batch_index: int) -> np.ndarray:
        """Window numbers (batch_size,) this rank reads for batch `batch_index` of `epoch`."""
        order = self._epoch_order(epoch)
        start = (batch_index * self.world_size + self.rank) * self.batch_size
        return order[start : start + self.batch_size]

    def get_batch(self, epoch: int, batch_index: int) -> dict[str, torch.Tensor]:
        starts = self.window_ids(epoch, batch_index) * self.seq_len
        windows = self.dataset.windows(starts, self.seq_len + 1)  # (B, T + 1)
        windows = torch.from_numpy(windows.astype(np.int64))
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}  # (B, T) each

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.get_batch(self.epoch, self.batch_index)
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "rank": self.rank,
                "num_windows": self.num_windows, "shuffle": self.shuffle, "order_seed_rule": ORDER_SEED_RULE}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved position; the data and layout must be the ones it was saved with.

        A state saved before the per-run data order (no "order_seed_rule") was seeded with data.seed: its
        seed is adopted, so the resumed run keeps the order it started with."""
        if "order_seed_rule" not in state and "seed" in state and state["seed"] != self.seed:
            warnings.warn(f"resuming a checkpoint written before data.order_seed existed: keeping its data-order "
                          f"seed {state['seed']} (data.seed) instead of {self.seed}, so the run continues unchanged",
                          stacklevel=2)
            self.seed, self._order_epoch, self._order = int(state["seed"]), None, None
        for key in ("seed", "seq_len", "batch_size", "world_size", "num_windows", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state was saved with {key}={state[key]} but this loader has {key}={getattr(self, key)}: "
                    "resuming would not reproduce the uninterrupted batches. Fix: resume with the same data and "
                    "data/train settings."
                )
        if not 0 <= int(state["batch_index"]) < self.batches_per_epoch:
            raise ValueError(f"loader state batch_index={state['batch_index']} outside [0, {self.batches_per_epoch})")
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])
