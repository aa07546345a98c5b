"""Reading documents through `datasets`: embedded corpus, local files or globs, or a Hub name.

Every source becomes a dataset with one string column `text`, one row per document.
Local files are grouped by format (from the extension, compression suffixes allowed), read with
the matching `datasets` builder and cast to one string type, so formats mix; a Hub name is streamed.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np

from .config import DataConfig

FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
           ".parquet": "parquet", ".csv": "csv"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")
# Compressions that need an optional package (module, pip name); the others are in the standard library.
OPTIONAL_COMPRESSION = {".zst": ("zstandard", "zstandard"), ".lz4": ("lz4", "lz4")}


class SourceError(ValueError):
    """A source problem already explained (file and fix named): passed on unchanged."""


def file_format(path: str, what: str = "data.train_files") -> str:
    """`datasets` builder name for a local file, from its extension; checks the compression is readable."""
    name = path.lower()
    compression = None
    for suffix in COMPRESSION:
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], suffix
    ext = os.path.splitext(name)[1]
    if ext not in FORMATS:
        raise ValueError(
            f"{what}: {path}: unknown format {ext or '(no extension)'!r}; supported: {sorted(FORMATS)} "
            f"(text formats optionally compressed {list(COMPRESSION)}). Fix: rename or convert the file."
        )
    if compression and FORMATS[ext] == "parquet":
        raise ValueError(
            f"{what}: {path}: parquet files are compressed internally, an outer {compression} cannot be read. "
            "Fix: decompress it and pass the .parquet file."
        )
    if compression in OPTIONAL_COMPRESSION:
        module, package = OPTIONAL_COMPRESSION[compression]
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"{what}: {path}: reading {compression} files needs the {package!r} package, which is not "
                f"installed. Fix: pip install {package}, or decompress the file."
            )
    return FORMATS[ext]


def _looks_like_hub_name(spec: str) -> bool:
    return not any(c in spec for c in "*?[") and not os.path.splitext(spec)[1] and spec.count("/") <= 1 \
        and not spec.startswith((".", "/", "~"))


def resolve_files(specs: list[str], what: str = "data.train_files",
                  allow_hub: bool = True) -> tuple[list[str], str | None]:
    """Expand globs and folders -> (sorted local files, None), or ([], hub_name) for a Hub dataset.

    Every file's format and compression are checked here, before anything is read. Only
    `allow_hub` sources (data.train_files) may name a Hub dataset.
    """
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
        elif allow_hub and len(specs) == 1 and _looks_like_hub_name(spec):
            return [], spec
        elif not allow_hub:
            raise FileNotFoundError(
                f"{what}: {spec!r} does not exist (looked for {os.path.abspath(expanded)}); {what} takes local "
                "files, globs or folders only. Fix: check the path."
            )
        else:
            raise FileNotFoundError(f"{what}: {spec!r} is neither an existing file, a glob, nor a Hub dataset name.")
    for f in files:
        file_format(f, what)
    return files, None


def _innermost(err: BaseException) -> BaseException:
    """The root cause of an exception chain (datasets wraps the real error, e.g. a UnicodeDecodeError)."""
    seen = {id(err)}
    while (nxt := err.__cause__ or err.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        err = nxt
    return err


def _describe_error(err: BaseException) -> str:
    root = _innermost(err)
    text = f"{type(root).__name__}: {root}" if str(root) else f"{type(root).__name__} (file empty or unparsable?)"
    if isinstance(root, UnicodeDecodeError):
        text += ". Fix: convert the file to UTF-8"
    return text


def _listed(files: list[str]) -> str:
    return ", ".join(files[:3]) + (f" (and {len(files) - 3} more)" if len(files) > 3 else "")


def _scalar_text(value, where: str) -> str | None:
    """A text-field value as a string: str unchanged, None stays None, numbers/booleans in JSON form."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise SourceError(
        f"{where} holds a {type(value).__name__} value, not text ({str(value)[:60]!r}). "
        "Fix: set data.text_column to a column of strings."
    )


def _as_text(ds, where: str):
    """The single `text` column as Value('string') (numbers -> their string form, nulls kept)."""
    import datasets

    feature = ds.features["text"]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "null"):
        return ds.cast_column("text", datasets.Value("string"))
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint", "float", "bool")):
        return ds.cast_column("text", datasets.Value("string"))
    return ds.map(lambda batch: {"text": [_scalar_text(v, where) for v in batch["text"]]}, batched=True,
                  features=datasets.Features({"text": datasets.Value("string")}), desc="reading text")


def _read_group(fmt: str, group: list[str], cfg: DataConfig, cache_dir: str | None):
    """One format's files -> (dataset with a string `text` column, rows whose text is missing/null)."""
    import datasets

    if fmt == "text":
        kwargs = {"sample_by": cfg.txt_sample_by}
    elif fmt == "csv":  # text as written: no "NA"/"null"/"None" -> NaN, no numbers parsed
        kwargs = {"na_filter": False, "converters": {cfg.text_column: str}}
    else:
        kwargs = {}
    column = "text" if fmt == "text" else cfg.text_column
    where = f"{_listed(group)}: column {column!r}"
    try:
        # datasets labels its file loop "Downloading data" even for local files (shown from 16 files on)
        local = datasets.DownloadConfig(download_desc=f"reading local {fmt} files")
        ds = datasets.load_dataset(fmt, data_files=group, split="train", cache_dir=cache_dir, download_config=local,
                                   **kwargs)
        if column not in ds.column_names:
            raise SourceError(
                f"{group[0]}{' (and others)' if len(group) > 1 else ''}: no column {column!r}; "
                f"columns are {ds.column_names}. Fix: set data.text_column to the column holding the text."
            )
        ds = ds.select_columns([column])
        if column != "text":
            ds = ds.rename_column(column, "text")
        ds = _as_text(ds, where)
        nulls = ds.data.column("text").null_count
        # decodes every row, so invalid UTF-8 (which the json reader lets through) surfaces here
        ds = ds.filter(lambda batch: [isinstance(t, str) and len(t) > 0 for t in batch["text"]], batched=True)
    except SourceError:
        raise
    except Exception as err:  # datasets raises several kinds on unreadable files, some only when rows are read
        raise SourceError(f"could not read {_listed(group)} as {fmt}: {_describe_error(err)}") from err
    return ds, nulls


def load_local(files: list[str], cfg: DataConfig, cache_dir: str | None = None, what: str = "data.train_files",
               report: dict | None = None):
    """Read local files into one `datasets.Dataset` with a single string `text` column.

    Formats may be mixed. Empty documents and empty files are dropped; rows whose text is missing
    or null are dropped with a warning naming the files, and counted in `report["rows_without_text"]`.
    """
    import datasets

    if not files:
        raise SourceError(f"{what}: no files to read. Fix: check the paths.")
    groups: dict[str, list[str]] = {}
    for f in files:
        fmt = file_format(f, what)
        if os.path.getsize(f) > 0:  # an empty file holds no documents (and the json reader fails on it)
            groups.setdefault(fmt, []).append(f)
    parts, without_text = [], 0
    for fmt, group in groups.items():
        ds, nulls = _read_group(fmt, group, cfg, cache_dir)
        if nulls:
            warnings.warn(f"{what}: {_listed(group)}: skipped {nulls} row(s) whose {cfg.text_column!r} is missing "
                          "or null", stacklevel=2)
        without_text += nulls
        parts.append(ds)
    if report is not None:
        report["rows_without_text"] = without_text
    parts = [ds for ds in parts if len(ds)]
    if not parts:
        raise SourceError(f"{what}: {_listed(files)}: no non-empty documents. Fix: check the input files.")
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def load_embedded(name: str):
    import datasets

    from .corpus import load_corpus

    docs = load_corpus(name)
    return datasets.Dataset.from_dict({"text": [d["text"] for d in docs]})


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached (offline mode set, or no connection to its endpoint within
    `timeout` seconds), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]} (offline mode)"
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as err:
        return f"{url.hostname} cannot be reached ({err})"
    return None


def load_hub(name: str, cfg: DataConfig):
    """Stream a Hub dataset (needs network); returns an IterableDataset with a `text` column."""
    offline = _hub_unreachable()
    if offline:  # fail in seconds, not after datasets' HEAD retries (about a minute)
        raise ValueError(
            f"data.train_files={name!r} is not a local path, so it was read as a Hub dataset, but {offline}. "
            f"Fix: check the path (local folders must exist: looked for {os.path.abspath(name)}), or go online.")
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

    def describe(specs, what, allow_hub):
        files, hub = resolve_files(specs, what, allow_hub)
        if hub:
            return {"hub": hub, "config": cfg.hub_config, "split": cfg.hub_split}
        return {"files": [{"path": os.path.abspath(f), "bytes": os.path.getsize(f),
                           "mtime_ns": os.stat(f).st_mtime_ns} for f in files]}

    if cfg.train_files:
        train = describe(cfg.train_files, "data.train_files", True)
    else:
        train = {"embedded": cfg.corpus, **EMBEDDED_CORPORA[cfg.corpus]} if cfg.corpus in EMBEDDED_CORPORA else None
        if train is None:
            raise ValueError(f"data.corpus={cfg.corpus!r} is not one of {sorted(EMBEDDED_CORPORA)}")
    return {"train": train, "val": describe(cfg.val_files, "data.val_files", False) if cfg.val_files else None}
