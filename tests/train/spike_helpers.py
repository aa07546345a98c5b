"""Induced spikes for the spike-policy tests: a toy loader with bad batches at chosen positions of
the data stream (so that a rewind, which moves the data on, really leaves them behind)."""

from __future__ import annotations

import torch

from mhc_lm.train.callbacks import BaseCallback
from mhc_lm.train.data import DataBundle
from tests.train.helpers import SEQ, VOCAB, ToyLoader, toy_tokens

SENTINEL = {"spike": VOCAB - 1, "nan": VOCAB - 2}  # first-row token of each kind of bad micro-batch
SPIKE_SCALE = 100.0


class PoisonedLoader(ToyLoader):
    """ToyLoader whose micro-batches number `index` (in this rank's stream, 0-based) in `bad` are bad:
    their first row is all SENTINEL[kind] tokens, which `PoisonHook` turns into logits x SPIKE_SCALE
    ("spike": a large finite loss) or NaN logits ("nan": a non-finite loss)."""

    def __init__(self, *args, bad: dict[int, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad = dict(bad or {})

    def __iter__(self):
        for batch in super().__iter__():
            index = self.position // self.batch_size - 1
            kind = self.bad.get(index)
            if kind is not None:
                batch["input_ids"][0] = SENTINEL[kind]
            yield batch


def poisoned_data(config, bad: dict[int, str]) -> DataBundle:
    """toy_data with bad micro-batches; `bad` is keyed by global batch (= step - 1): the first micro-batch
    of that step is the bad one."""
    micro = config.train.micro_batch_size
    accumulation = config.train.batch_size // micro
    train = PoisonedLoader(toy_tokens(), SEQ, micro, bad={b * accumulation: k for b, k in bad.items()})
    val_tokens = toy_tokens(4000, seed=1)
    return DataBundle(train, lambda: ToyLoader(val_tokens, SEQ, micro), VOCAB, SEQ)


class PoisonHook(BaseCallback):
    """Logits x SPIKE_SCALE (or NaN) for a micro-batch whose first row is all SENTINEL["spike"] (["nan"])."""

    def on_train_begin(self, trainer):
        model = trainer.unwrapped_model
        if getattr(model, "_poison_hook", False):
            return
        model._poison_hook = True
        factor = {"value": None}

        def pre(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            factor["value"] = None
            for kind, token in SENTINEL.items():
                if ids is not None and bool((ids[0] == token).all()):
                    factor["value"] = SPIKE_SCALE if kind == "spike" else float("nan")

        model.register_forward_pre_hook(pre, with_kwargs=True)
        model.lm_head.register_forward_hook(lambda m, i, out: out if factor["value"] is None else out * factor["value"])
