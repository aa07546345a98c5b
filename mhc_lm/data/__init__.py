"""Data: embedded corpus, sentencepiece tokenizer, packed token shards, resumable window loader.

    from mhc_lm.data import DataConfig, prepare_data, load_tokenizer, PackedTokens, WindowLoader
    out_dir = prepare_data(DataConfig(vocab_size=4096, out_dir="data_cache/sotu-4k"))
    loader = WindowLoader(PackedTokens(out_dir, "train"), seq_len=256, batch_size=8, rank=0, world_size=1)

See docs/data.md.
"""

from .config import DataConfig
from .loader import WindowLoader
from .prepare import prepare_data
from .shards import PackedTokens, check_compatible, read_meta
from .tokenizer import SPECIAL_TOKENS, load_tokenizer

__all__ = ["DataConfig", "prepare_data", "load_tokenizer", "PackedTokens", "WindowLoader", "check_compatible",
           "read_meta", "SPECIAL_TOKENS"]
