"""Glue between the run config and `mhc_lm.data`: the per-rank train loader, a fresh validation
loader per evaluation (so every evaluation sees the same windows), and the tokenizer.

`Trainer` accepts any `DataBundle`, so tests can feed a tiny in-memory loader with the same
interface as `WindowLoader` (iterable of {"input_ids", "labels"} (B, T) batches, `state_dict`,
`load_state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable


@dataclass
class DataBundle:
    train_loader: Any
    """Infinite per-rank iterable of {"input_ids", "labels"} batches with state_dict/load_state_dict."""
    make_val_loader: Callable[[], Iterable] | None
    """Returns a fresh, deterministic per-rank validation iterable (None = no validation)."""
    vocab_size: int
    """Token ids are < vocab_size."""
    seq_len: int
    """Window length T of every batch."""
    tokenizer: Any = None
    """transformers tokenizer saved next to the exported model (None: export without one)."""
    prepared_dir: Path | None = None
    """The data preparation directory (recorded in meta.json)."""


def build_data(config, accelerator) -> DataBundle:
    """Prepare (main process first, idempotent) and open the corpus of `config.data`."""
    from mhc_lm.data import PackedTokens, WindowLoader, load_tokenizer, prepare_data

    with accelerator.main_process_first():
        out_dir = Path(prepare_data(config.data))
    tokenizer = load_tokenizer(out_dir)
    train = PackedTokens(out_dir, split="train")
    seq_len = config.data.seq_len
    rank, world, micro = accelerator.process_index, accelerator.num_processes, config.train.micro_batch_size
    loader = WindowLoader(train, seq_len, micro, rank=rank, world_size=world,
                          seed=config.data.order_seed_for(config.train.seed),  # replicates differ in order
                          step_windows=config.train.batch_size)  # epochs end on optimizer-step boundaries
    try:
        val = PackedTokens(out_dir, split="val")
    except (FileNotFoundError, ValueError, KeyError):
        val = None

    def make_val_loader():
        return WindowLoader(val, seq_len, micro, rank=rank, world_size=world, seed=config.data.seed + 1)

    if val is not None:
        try:
            make_val_loader()
        except ValueError as err:  # validation split smaller than one global batch
            if accelerator.is_main_process:
                print(f"[mhc-lm] no validation loss: {err}", flush=True)
            val = None
    vocab = max(int(train.vocab_size), len(tokenizer))
    return DataBundle(loader, make_val_loader if val is not None else None, vocab, seq_len, tokenizer, out_dir)
