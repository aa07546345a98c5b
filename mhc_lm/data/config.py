"""The `data` section of the run config (also read by `launch/prepare_data.py`)."""

from __future__ import annotations

from dataclasses import dataclass

TXT_SAMPLE_BY = ("document", "paragraph", "line")
TOKEN_DTYPES = ("auto", "uint16", "uint32")
DEFAULT_VOCAB_SIZE = 8192


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
    vocab_size: int | None = None
    """Vocabulary size of a newly trained tokenizer (None = 8192). With `tokenizer` set the vocab is the
    tokenizer's: leave this None, or it must equal that vocab (checked by prepare_data)."""
    seq_len: int = 256
    """Tokens per training window (windows read seq_len + 1 tokens for next-token targets)."""
    out_dir: str = "data_cache/default"
    """Where tokenizer/, shards and metadata are written."""
    num_proc: int = 2
    """Worker processes for tokenization."""
    seed: int = 0
    """Preparation seed: which documents are held out for validation, the tokenizer's training sample, and
    which validation windows are evaluated. Not the training data order (see `order_seed`)."""
    order_seed: int | None = None
    """Seed of the training-window order; None = `train.seed`, so each replicate seed also sees its own
    data order. Set it to fix the order across runs (e.g. to vary only the initialisation)."""
    corpus: str = "sotu"
    """Embedded corpus used when `train_files` is None (see `mhc_lm.data.corpus.EMBEDDED_CORPORA`)."""
    txt_sample_by: str = "document"
    """How .txt files split into documents: one per file ('document'), per blank-line 'paragraph', or per 'line'."""
    hub_split: str = "train"
    """Split of a Hub dataset to read (Hub inputs are streamed)."""
    hub_config: str | None = None
    """Configuration name of a Hub dataset, if it has several."""
    max_documents: int | None = None
    """Read at most this many documents (required to bound a streamed Hub dataset; None = all)."""
    tokenizer_train_chars: int = 200_000_000
    """At most this many characters of the train split (in seeded random document order) train the tokenizer."""
    shard_tokens: int = 100_000_000
    """Tokens per binary shard file (the last shard of a split holds the remainder)."""
    token_dtype: str = "auto"
    """Shard dtype: 'auto' (uint16 when the vocab fits, else uint32), 'uint16' or 'uint32'."""
    overwrite: bool = False
    """Replace an earlier preparation in out_dir that does not match this config (otherwise an error); a folder
    with content prepare_data did not write is never replaced."""

    def order_seed_for(self, train_seed: int) -> int:
        """The seed of the training-window order of a run whose `train.seed` is `train_seed`."""
        return train_seed if self.order_seed is None else self.order_seed

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        if self.vocab_size is None and self.tokenizer is None:
            self.vocab_size = DEFAULT_VOCAB_SIZE
        if self.vocab_size is not None and self.vocab_size < 300:
            raise ValueError(
                f"data.vocab_size={self.vocab_size} is too small: a byte-fallback tokenizer needs 256 byte "
                "tokens + 4 special tokens + merges; use at least 300 (e.g. data.vocab_size=512)"
            )
        if self.seq_len < 1:
            raise ValueError(f"data.seq_len={self.seq_len} must be >= 1")
        if self.num_proc < 1:
            raise ValueError(f"data.num_proc={self.num_proc} must be >= 1")
        if self.shard_tokens < 1:
            raise ValueError(f"data.shard_tokens={self.shard_tokens} must be >= 1")
        if self.txt_sample_by not in TXT_SAMPLE_BY:
            raise ValueError(f"data.txt_sample_by={self.txt_sample_by!r} is not one of {list(TXT_SAMPLE_BY)}")
        if self.token_dtype not in TOKEN_DTYPES:
            raise ValueError(f"data.token_dtype={self.token_dtype!r} is not one of {list(TOKEN_DTYPES)}")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"data.max_documents={self.max_documents} must be >= 1 or null")
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.val_files, str):
            self.val_files = [self.val_files]
