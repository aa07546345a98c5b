"""Reading documents through `datasets`: embedded corpus, local files or globs, or a Hub name.

Every source becomes a dataset with one string column `text`, one row per document.
Local files are grouped by format (from the extension, compression suffixes allowed) and
read with the matching `datasets` builder; a Hub name is streamed.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import numpy as np

from .config import DataConfig

FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
           ".parquet": "parquet", ".csv": "csv"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def file_format(path: str) -> str:
    """`datasets` builder name for a local file, from its extension."""
    name = path.lower()
    for suffix in COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    ext = os.path.splitext(name)[1]
    if ext not in FORMATS:
        raise ValueError(
            f"{path}: unknown format {ext or '(no extension)'!r}; supported: {sorted(FORMATS)} "
            f"(optionally compressed {list(COMPRESSION)}). Fix: rename or convert the file."
        )
    return FORMATS[ext]


def _looks_like_hub_name(spec: str) -> bool:
    return not any(c in spec for c in "*?[") and not os.path.splitext(spec)[1] and spec.count("/") <= 1 \
        and not spec.startswith((".", "/", "~"))


def resolve_files(specs: list[str], what: str = "data.train_files") -> tuple[list[str], str | None]:
    """Expand globs and folders -> (sorted local files, None), or ([], hub_name) for a Hub dataset."""
    files: list[str] = []
    for spec in specs:
        expanded = os.path.expanduser(spec)
        if any(c in expanded for c in "*?["):
            matched = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
            if not matched:
                raise ValueError(f"{what}: no file matches {spec!r}. Fix: check the path or glob.")
            files += matched
        elif os.path.isdir(expanded):
            matched = sorted(str(p) for p in Path(expanded).rglob("*") if p.is_file() and not p.name.startswith("."))
            if not matched:
                raise ValueError(f"{what}: folder {spec!r} holds no files.")
            files += matched
        elif os.path.isfile(expanded):
            files.append(expanded)
        elif len(specs) == 1 and _looks_like_hub_name(spec):
            return [], spec
        else:
            raise FileNotFoundError(f"{what}: {spec!r} is neither an existing file, a glob, nor a Hub dataset name.")
    return files, None


def load_local(files: list[str], cfg: DataConfig, cache_dir: str | None = None):
    """Read local files into one `datasets.Dataset` with a single `text` column (empty docs dropped)."""
    import datasets

    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(file_format(f), []).append(f)
    parts = []
    for fmt, group in groups.items():
        kwargs = {"sample_by": cfg.txt_sample_by} if fmt == "text" else {}
        try:
            ds = datasets.load_dataset(fmt, data_files=group, split="train", cache_dir=cache_dir, **kwargs)
        except Exception as err:  # datasets raises several kinds on unreadable files
            raise ValueError(f"could not read {group[:3]}{' ...' if len(group) > 3 else ''} as {fmt}: {err}") from err
        column = "text" if fmt == "text" else cfg.text_column
        if column not in ds.column_names:
            raise ValueError(
                f"{group[0]}{' (and others)' if len(group) > 1 else ''}: no column {column!r}; "
                f"columns are {ds.column_names}. Fix: set data.text_column to the column holding the text."
            )
        ds = ds.select_columns([column])
        if column != "text":
            ds = ds.rename_column(column, "text")
        parts.append(ds)
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    ds = ds.filter(lambda batch: [isinstance(t, str) and len(t) > 0 for t in batch["text"]], batched=True)
    if len(ds) == 0:
        raise ValueError(f"{files[:3]}{' ...' if len(files) > 3 else ''}: no non-empty documents. Fix: check the input files.")
    return ds


def load_embedded(name: str):
    import datasets

    from .corpus import load_corpus

    docs = load_corpus(name)
    return datasets.Dataset.from_dict({"text": [d["text"] for d in docs]})


def load_hub(name: str, cfg: DataConfig):
    """Stream a Hub dataset (needs network); returns an IterableDataset with a `text` column."""
    import datasets

    try:
        ds = datasets.load_dataset(name, cfg.hub_config, split=cfg.hub_split, streaming=True)
    except Exception as err:  # offline, unknown name, wrong config/split: datasets raises many kinds
        raise ValueError(
            f"data.train_files={name!r} is not a local path, so it was read as a Hub dataset, which failed: {err}. "
            "Fix: check the path (local folders must exist), or the Hub name / data.hub_config / data.hub_split "
            "and the network."
        ) from err
    if ds.column_names is not None and cfg.text_column not in ds.column_names:
        raise ValueError(
            f"Hub dataset {name!r}: no column {cfg.text_column!r}; columns are {ds.column_names}. "
            "Fix: set data.text_column."
        )
    ds = ds.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    ds = ds.filter(lambda row: isinstance(row["text"], str) and len(row["text"]) > 0)
    if cfg.max_documents is not None:
        ds = ds.take(cfg.max_documents)
    return ds


def split_indices(num_docs: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic whole-document split -> (train indices, val indices), both sorted.

    round(val_fraction * num_docs) documents (at least one when val_fraction > 0) are drawn
    with a seeded permutation, so a seed always holds out the same documents.
    """
    if val_fraction <= 0:
        return np.arange(num_docs), np.zeros(0, dtype=np.int64)
    if num_docs < 2:
        raise ValueError(
            f"only {num_docs} document(s): a validation split needs whole documents. "
            "Fix: set data.val_fraction=0, give data.val_files, or split the text into more documents "
            "(data.txt_sample_by=paragraph)."
        )
    n_val = min(max(1, round(val_fraction * num_docs)), num_docs - 1)
    perm = np.random.default_rng(seed).permutation(num_docs)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def is_val_document(index: int, val_fraction: float, seed: int) -> bool:
    """Split rule for streams of unknown length: a seeded hash of the document index."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def source_description(cfg: DataConfig) -> dict:
    """What was read, for meta.json and the preparation fingerprint (files with size and mtime)."""
    from .corpus import EMBEDDED_CORPORA

    def describe(specs):
        files, hub = resolve_files(specs)
        if hub:
            return {"hub": hub, "config": cfg.hub_config, "split": cfg.hub_split}
        return {"files": [{"path": os.path.abspath(f), "bytes": os.path.getsize(f),
                           "mtime_ns": os.stat(f).st_mtime_ns} for f in files]}

    if cfg.train_files:
        train = describe(cfg.train_files)
    else:
        train = {"embedded": cfg.corpus, **EMBEDDED_CORPORA[cfg.corpus]} if cfg.corpus in EMBEDDED_CORPORA else None
        if train is None:
            raise ValueError(f"data.corpus={cfg.corpus!r} is not one of {sorted(EMBEDDED_CORPORA)}")
    return {"train": train, "val": describe(cfg.val_files) if cfg.val_files else None}
