"""A tiny in-memory corpus with the WindowLoader interface, and a tiny run config."""

from __future__ import annotations


import torch

from mhc_lm.config_utils import from_dict
from mhc_lm.train.callbacks import BaseCallback
from mhc_lm.train.config import RunConfig
from mhc_lm.train.data import DataBundle
from tests.threads import one_thread  # noqa: F401  (re-exported for the train tests)

VOCAB, SEQ = 256, 16
TINY_MODEL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, n_streams=2,
                  grid_size=1, sinkhorn_iters=5)


class ToyLoader:
    """Deterministic windows of a fixed token stream; window k of the global order goes to rank
    k % world_size, so ranks read disjoint windows and the union over ranks of one global step
    equals what a single process reads (the property the 1-vs-N-process test relies on)."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.position = 0  # windows this rank has yielded
        n = (len(tokens) - 1) // seq_len
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(0))

    def _window(self, k: int) -> torch.Tensor:
        start = int(self.order[k % len(self.order)]) * self.seq_len
        return self.tokens[start: start + self.seq_len + 1]

    def __iter__(self):
        while True:
            ks = [(self.position + i) * self.world_size + self.rank for i in range(self.batch_size)]
            self.position += self.batch_size
            w = torch.stack([self._window(k) for k in ks])  # (B, T + 1)
            yield {"input_ids": w[:, :-1].clone(), "labels": w[:, 1:].clone()}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def toy_tokens(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """A learnable stream: a noisy repeating pattern over the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) * 7 % VOCAB
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.8
    return torch.where(keep, base, noise)


def toy_data(config: RunConfig, rank: int = 0, world_size: int = 1) -> DataBundle:
    micro = config.train.micro_batch_size
    train = ToyLoader(toy_tokens(), SEQ, micro, rank, world_size)
    val_tokens = toy_tokens(4000, seed=1)
    return DataBundle(train, lambda: ToyLoader(val_tokens, SEQ, micro, rank, world_size), VOCAB, SEQ)


def tiny_config(run_dir, mode: str = "standard", **sections) -> RunConfig:
    data = {
        "model": {**TINY_MODEL, "residual_mode": mode},
        "data": {"seq_len": SEQ},
        "train": {"max_steps": 8, "batch_size": 4, "micro_batch_size": 2, "eval_every": 4, "eval_batches": 2,
                  "export_hf": False},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "checkpoint": {"every": 4, "keep_last": 2},
        "logging": {"progress_bar": False},
        "metrics": {"enabled": False},
        "run_dir": str(run_dir),
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


class Killed(BaseException):
    """A simulated kill: not an Exception, so nothing in the trainer catches it."""


class DieAt(BaseCallback):
    """Kills the run at the end of `step`; with `log=True` that step's line is logged first."""

    def __init__(self, step: int, log: bool = False):
        self.step, self.log = step, log

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            if self.log:
                trainer._log(logs)
            raise Killed
