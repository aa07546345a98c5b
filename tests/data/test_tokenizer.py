"""Tokenizer: exact round trip (incl. non-ASCII), fixed special ids, fast encoder == HF ids."""

from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from mhc_lm.data import PackedTokens, load_tokenizer, read_meta
from mhc_lm.data.sources import split_indices
from mhc_lm.data.tokenizer import DocumentEncoder

EDGE_CASES = [
    "", " ", "  leading spaces", "trailing spaces  ", "a  b   c\t\td\n\ne", "\n", "line\r\nbreak",
    "Grüße aus Zürich — naïve café, 日本語テキスト, emoji 🙂👍🏽, math ∑x² ≤ ∞",
    "literal specials </s> <s> <pad> <unk> stay text", "1790-2021: 3.14159",
]
METASPACE_TEXT = "a ▁ literal metaspace▁char"  # U+2581 decodes as a space (as in sentencepiece): ids only


def test_round_trip_on_held_out_text(prepared, corpus_docs):
    out_dir, cfg = prepared
    tok = AutoTokenizer.from_pretrained(out_dir / "tokenizer")  # offline: HF_HUB_OFFLINE=1 in conftest
    _, val_idx = split_indices(len(corpus_docs), cfg.val_fraction, cfg.seed)
    held_out = [corpus_docs[i] for i in val_idx]
    assert held_out and any(ord(c) > 127 for doc in held_out for c in doc)
    for text in held_out + EDGE_CASES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    unk = tok.unk_token_id
    ids = tok(EDGE_CASES[7], add_special_tokens=False)["input_ids"]
    assert unk not in ids  # byte fallback: nothing becomes <unk>


def test_resaved_tokenizer_keeps_the_pipeline(prepared, corpus_docs, tmp_path):
    """Run exports re-save the tokenizer (save_pretrained): ids and round trip must survive."""
    tok = load_tokenizer(prepared[0])
    tok.save_pretrained(tmp_path / "export")
    again = AutoTokenizer.from_pretrained(tmp_path / "export")
    texts = corpus_docs[:3] + EDGE_CASES
    assert again(texts, add_special_tokens=False)["input_ids"] == tok(texts, add_special_tokens=False)["input_ids"]
    assert all(again.decode(again(t, add_special_tokens=False)["input_ids"]) == t for t in texts)
    assert again.eos_token_id == 2 and again.pad_token_id == 0


def test_special_token_ids_fit_the_model_config(prepared):
    out_dir, cfg = prepared
    tok = load_tokenizer(out_dir)
    meta = read_meta(out_dir)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == meta["vocab_size"] == cfg.vocab_size
    assert meta["tokenizer"]["eos_token_id"] == 2 and meta["dtype"] == "uint16"


def test_fast_encoder_matches_hf_tokenizer(prepared, corpus_docs):
    out_dir, _ = prepared
    tok = load_tokenizer(out_dir)
    enc = DocumentEncoder(out_dir / "tokenizer")
    assert enc.word_split  # the cached-word path is the one under test
    texts = corpus_docs[:10] + EDGE_CASES + [METASPACE_TEXT]
    ours = enc.encode(texts)
    theirs = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ours == theirs
    assert 2 not in enc.encode(["literal </s> inside a document"])[0]  # EOS only at document ends


def test_shards_decode_back_to_the_documents(prepared, corpus_docs):
    """End to end: the train shard is the train documents in order, each followed by one EOS."""
    out_dir, cfg = prepared
    tok = load_tokenizer(out_dir)
    train_idx, _ = split_indices(len(corpus_docs), cfg.val_fraction, cfg.seed)
    ds = PackedTokens(out_dir, "train")
    tokens = ds[0 : len(ds)]
    eos_positions = np.flatnonzero(tokens == tok.eos_token_id)
    assert len(eos_positions) == ds.num_documents == len(train_idx)
    assert eos_positions[-1] == len(ds) - 1
    starts = np.concatenate([[0], eos_positions[:-1] + 1])
    decoded = [tok.decode(tokens[s:e].tolist()) for s, e in zip(starts, eos_positions)]
    assert decoded == [corpus_docs[i] for i in train_idx]
