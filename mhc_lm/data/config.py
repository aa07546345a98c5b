"""The `data` section of the run config (also read by `launch/prepare_data.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    train_files: list[str] | None = None
    """Local files or globs (.txt, .jsonl/.json, .parquet, .csv) or a Hub dataset name; None = embedded corpus."""
    val_files: list[str] | None = None
    """Optional explicit validation files; when None, `val_fraction` of the documents is held out."""
    text_column: str = "text"
    """Column holding the document text in json/parquet/csv inputs and Hub datasets."""
    val_fraction: float = 0.02
    """Fraction of whole documents held out for validation (deterministic by `seed`)."""
    tokenizer: str | None = None
    """Existing HF tokenizer directory or hub name; None = train a sentencepiece BPE on the train split."""
    vocab_size: int = 8192
    """Vocabulary size of a newly trained tokenizer."""
    seq_len: int = 256
    """Tokens per training window (windows read seq_len + 1 tokens for next-token targets)."""
    out_dir: str = "data_cache/default"
    """Where tokenizer/, shards and metadata are written."""
    num_proc: int = 2
    """Worker processes for tokenization."""
    seed: int = 0
    """Seed for the validation split and the shuffle of windows."""
