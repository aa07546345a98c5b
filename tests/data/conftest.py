"""Small synthetic corpora for the data tests (seconds to prepare, no network)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mhc_lm.data import DataConfig, prepare_data

UNICODE_WORDS = ["café", "naïve", "Ωmega", "日本語", "señor", "Zürich", "—", "“quoted”", "🙂", "x²"]


def synthetic_docs(n_docs: int = 40, seed: int = 0, words_per_doc: tuple[int, int] = (80, 200)) -> list[str]:
    """Seeded pseudo-English documents with punctuation, newlines, odd spacing and non-ASCII words."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    lexicon = ["".join(rng.choice(letters[: rng.randint(8, 26)]) for _ in range(rng.randint(1, 9)))
               for _ in range(400)]
    docs = []
    for _ in range(n_docs):
        words = []
        for i in range(rng.randint(*words_per_doc)):
            w = rng.choice(lexicon) if rng.random() > 0.05 else rng.choice(UNICODE_WORDS)
            if i % 12 == 0:
                w = w.capitalize()
            words.append(w + rng.choice(["", "", "", ",", ".", ";"]))
        text = " ".join(words)
        text = text.replace(". ", ".\n", 2).replace("; ", ";  ", 1)  # newlines, double spaces
        docs.append(text + rng.choice(["", "\n", " "]))
    return docs


def write_txt(folder: Path, docs: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        p = folder / f"doc_{i:03d}.txt"
        p.write_text(doc, encoding="utf-8")
        paths.append(str(p))
    return paths


def small_config(tmp: Path, **kw) -> DataConfig:
    base = dict(train_files=[str(tmp / "txt" / "*.txt")], vocab_size=400, val_fraction=0.1,
                out_dir=str(tmp / "prepared"), num_proc=1, seed=0)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    return synthetic_docs()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, corpus_docs) -> tuple[Path, DataConfig]:
    """A prepared folder (vocab 400, 10% validation) shared by read-only tests."""
    tmp = tmp_path_factory.mktemp("prepared_small")
    write_txt(tmp / "txt", corpus_docs)
    cfg = small_config(tmp)
    return prepare_data(cfg, progress=False), cfg
