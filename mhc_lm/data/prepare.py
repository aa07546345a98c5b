"""`prepare_data(cfg)`: documents -> tokenizer -> packed token shards, atomically.

Everything is built in a hidden staging folder next to `out_dir` and renamed into place only
when complete (meta.json written last), so an interrupted or failed run never leaves a
folder that looks prepared. A complete folder whose fingerprint (the config keys that change
the tokens + the input files' sizes and mtimes) matches is reused as is.

`data.overwrite=true` replaces only an earlier preparation (nothing but meta.json, tokenizer/ and
shards, with our meta.json or shards present) or an empty folder; a folder with any other content
is never deleted. Staging folders are named `.NAME.partial-HOST-PID-RANDOM`; those left behind by a killed
run (its process gone on this host, or older than a day) are removed by the next prepare of NAME.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mhc_lm.config_utils import to_dict

from .config import DEFAULT_VOCAB_SIZE, DataConfig
from .shards import PackedTokens, ShardWriter, choose_dtype
from .staging import remove_stale_partials, staging_name
from .sources import (_looks_like_hub_name, is_val_document, load_embedded, load_hub, load_local, resolve_files,
                      source_description, split_indices)
from .tokenizer import (DocumentEncoder, check_encoder_agreement, import_tokenizer, load_tokenizer,
                        load_tokenizer_by_name, tokenizer_sha256, tokenizer_vocab_size, train_sentencepiece)

FORMAT_VERSION = 1
FINGERPRINT_KEYS = ("train_files", "val_files", "text_column", "val_fraction", "tokenizer", "vocab_size", "seed",
                    "corpus", "txt_sample_by", "hub_split", "hub_config", "max_documents",
                    "tokenizer_train_chars", "shard_tokens", "token_dtype")
ROUND_TRIP_PROBE = "  Naïve café — “quotes”, 日本語, emoji 🙂\n\ttabs  and   spaces, digits 1790-2021 "
# Every name prepare_data ever writes inside out_dir (staging included); anything else is not ours.
LAYOUT_NAMES = re.compile(r"meta\.json(\.tmp)?|tokenizer|(train|val)_\d{5}\.bin(\.tmp)?")


def _fingerprint_inputs(cfg: DataConfig) -> dict:
    inputs = {"format_version": FORMAT_VERSION, **{k: to_dict(getattr(cfg, k)) for k in FINGERPRINT_KEYS}}
    if inputs["vocab_size"] is None:  # data.tokenizer set, vocab_size left unset: same key as before
        inputs["vocab_size"] = DEFAULT_VOCAB_SIZE
    inputs["sources"] = source_description(cfg)
    if cfg.tokenizer and Path(cfg.tokenizer).is_dir():
        inputs["tokenizer_sha256"] = tokenizer_sha256(Path(cfg.tokenizer))
    return inputs


def _comparable(fingerprint: dict) -> dict:
    """A fingerprint with local path specs made absolute, so `a.txt` and `/abs/a.txt` match.

    Applied to both the stored and the new fingerprint when comparing (what is stored is unchanged,
    so earlier preparations stay reusable). Hub names are left as they are.
    """
    out = dict(fingerprint)
    for key in ("train_files", "val_files"):
        specs = out.get(key)
        if isinstance(specs, list):
            out[key] = [s if not isinstance(s, str) or (_looks_like_hub_name(s) and not os.path.exists(s))
                        else os.path.abspath(os.path.expanduser(s)) for s in specs]
    return out


def _not_replaceable(out_dir: Path) -> str | None:
    """Why out_dir must not be deleted, or None when it is empty or recognisably a preparation.

    A preparation holds only names prepare_data writes, and either our meta.json or token shards.
    """
    if not out_dir.is_dir() or out_dir.is_symlink():
        return "is not a folder"
    names = sorted(p.name for p in out_dir.iterdir())
    if not names:
        return None
    foreign = [n for n in names if not LAYOUT_NAMES.fullmatch(n)]
    if foreign:
        listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"holds files prepare_data did not write ({listed})"
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
        ours = isinstance(meta, dict) and {"format_version", "splits"} <= set(meta)
    except (OSError, ValueError):
        ours = False
    if not ours and not any(n.endswith((".bin", ".bin.tmp")) for n in names):
        return f"holds no meta.json or token shards of a data preparation (only {', '.join(names)})"
    return None


def _check_replaceable(out_dir: Path) -> None:
    """Refuse (always, overwrite or not) to replace a folder that is not an earlier preparation."""
    why = _not_replaceable(out_dir)
    if why:
        raise FileExistsError(
            f"{out_dir} exists and is not a prepared data folder: it {why}. It is never replaced, even with "
            "data.overwrite=true. Fix: set data.out_dir to a new or empty folder (e.g. data_cache/NAME)."
        )


def _reusable(out_dir: Path, inputs: dict, overwrite: bool) -> bool:
    """True when out_dir already holds this exact, complete preparation; errors on a foreign folder.

    False means out_dir is absent, empty, or (with `overwrite`) an earlier preparation that may be
    replaced. A folder with content prepare_data did not write is always an error.
    """
    if not out_dir.exists():
        return False
    meta_path = out_dir / "meta.json"
    fix = "Fix: choose another data.out_dir, or set data.overwrite=true to replace it."
    if not meta_path.is_file():
        _check_replaceable(out_dir)
        if not any(out_dir.iterdir()):
            return False
        if overwrite:
            return False
        raise FileExistsError(f"{out_dir} holds an incomplete data preparation (no meta.json). {fix}")
    try:
        old = json.loads(meta_path.read_text()).get("fingerprint_inputs", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        if not overwrite:  # a torn or edited file, not another config
            raise ValueError(f"{meta_path} is corrupt (not a JSON object: {type(err).__name__}). Fix: set "
                             "data.overwrite=true to prepare the data again, or choose another data.out_dir.") from err
        old = None
    if isinstance(old, dict):
        old = _comparable(old)
    inputs = _comparable(json.loads(json.dumps(inputs)))
    if old == inputs:
        try:
            for split in json.loads(meta_path.read_text())["splits"]:
                PackedTokens(out_dir, split)  # validates shard sizes and tokenizer checksum
            return True
        except (ValueError, FileNotFoundError) as err:
            if not overwrite:
                raise ValueError(f"{out_dir} matches this config but is damaged: {err}") from err
            _check_replaceable(out_dir)
            return False
    _check_replaceable(out_dir)
    if overwrite:
        return False
    changed = sorted(k for k in set(inputs) | set(old or {}) if (old or {}).get(k) != inputs.get(k))
    raise FileExistsError(f"{out_dir} holds data prepared with a different config or input (differs in: {changed}). {fix}")


def _publish(staging: Path, out_dir: Path, inputs: dict, overwrite: bool = True) -> None:
    """Rename the finished staging folder to out_dir (replacing an old one only after success)."""
    old = None
    if out_dir.exists():
        if _reusable(out_dir, inputs, overwrite=overwrite):
            return  # another process (e.g. a second rank) published this same preparation meanwhile
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except OSError:
        # Another process (e.g. a second rank) published the same preparation first.
        if old is not None:
            os.rename(old, out_dir)
            old = None
        if not _reusable(out_dir, inputs, overwrite=False):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _load_splits(cfg: DataConfig, cache_dir: Path, skipped: dict | None = None):
    """-> (train, val, streamed): datasets with a `text` column; val may be None.

    `skipped` receives the rows dropped for missing/null text per source key (local files only).
    """
    skipped = {} if skipped is None else skipped

    def local(files, what):
        report: dict = {}
        ds = load_local(files, cfg, str(cache_dir), what=what, report=report)
        skipped[what] = report.get("rows_without_text", 0)
        return ds

    if not cfg.train_files:
        full = load_embedded(cfg.corpus)
    else:
        files, hub = resolve_files(cfg.train_files)
        if hub:  # streamed: val is data.val_files when given, else split off by seeded hash (_write_stream)
            val = None
            if cfg.val_files:
                val_files, _ = resolve_files(cfg.val_files, "data.val_files", allow_hub=False)
                val = local(val_files, "data.val_files")
            return load_hub(hub, cfg), val, True
        full = local(files, "data.train_files")
    if cfg.max_documents is not None and len(full) > cfg.max_documents:
        full = full.select(range(cfg.max_documents))
    if cfg.val_files:
        val_files, _ = resolve_files(cfg.val_files, "data.val_files", allow_hub=False)
        return full, local(val_files, "data.val_files"), False
    train_idx, val_idx = split_indices(len(full), cfg.val_fraction, cfg.seed)
    val = full.select(val_idx) if len(val_idx) else None
    return full.select(train_idx), val, False


def _tokenizer_texts(train, cfg: DataConfig, streamed: bool):
    """Train-split texts for tokenizer training, in seeded random document order (not for streams)."""
    if streamed:
        for i, row in enumerate(train):
            if not is_val_document(i, cfg.val_fraction, cfg.seed):
                yield row["text"]
        return
    for batch in train.shuffle(seed=cfg.seed).iter(batch_size=256):
        yield from batch["text"]


def _write_split(ds, name: str, encoder: DocumentEncoder, staging: Path, dtype: str, cfg: DataConfig,
                 progress: bool) -> dict:
    import pyarrow.compute as pc

    num_proc = cfg.num_proc if cfg.num_proc > 1 and len(ds) >= 2 * cfg.num_proc else None
    mapped = ds.map(encoder, batched=True, batch_size=128, num_proc=num_proc, remove_columns=ds.column_names,
                    cache_file_name=str(staging / "cache" / f"{name}_tokens.arrow"), load_from_cache_file=False,
                    desc=f"tokenizing {name}")
    writer = ShardWriter(staging, name, dtype, cfg.shard_tokens)
    for table in tqdm(mapped.with_format("arrow").iter(batch_size=4096), desc=f"writing {name} shards",
                      disable=not progress, unit="batch"):
        flat = pc.list_flatten(table.column("input_ids")).to_numpy()  # (tokens,) ids, EOS-terminated docs
        writer.write(flat, documents=table.num_rows)
    return writer.close()


def _write_stream(stream, encoder: DocumentEncoder, staging: Path, dtype: str, cfg: DataConfig, progress: bool):
    """One pass over a streamed dataset, sending each document to train or val by seeded hash."""
    writers = {s: ShardWriter(staging, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    pending: dict[str, list[str]] = {"train": [], "val": []}

    def flush(split):
        if pending[split]:
            ids = encoder({"text": pending[split]})["input_ids"]
            writers[split].write(np.concatenate([np.asarray(d, dtype=np.int64) for d in ids]), documents=len(ids))
            pending[split] = []

    for i, row in enumerate(tqdm(stream, desc="tokenizing stream", disable=not progress, unit="doc")):
        split = "val" if is_val_document(i, cfg.val_fraction, cfg.seed) else "train"
        pending[split].append(row["text"])
        if len(pending[split]) >= 256:
            flush(split)
    out = {}
    for split in ("train", "val"):
        flush(split)
        out[split] = writers[split].close()
    return out if out["val"]["documents"] else {"train": out["train"]}


def _check_tokenizer_vocab(cfg: DataConfig) -> None:
    """data.vocab_size sizes a newly trained tokenizer; with data.tokenizer it must be unset or agree."""
    tok = load_tokenizer_by_name(cfg.tokenizer)
    vocab = tokenizer_vocab_size(tok)
    if vocab != cfg.vocab_size:
        raise ValueError(
            f"data.tokenizer={cfg.tokenizer!r} has a vocabulary of {vocab} tokens but data.vocab_size="
            f"{cfg.vocab_size}: data.vocab_size only sets the size of a tokenizer trained when data.tokenizer is "
            f"unset, so it cannot change this one. Fix: set data.vocab_size=null (or {vocab}) and "
            f"model.vocab_size >= {vocab}, or unset data.tokenizer to train a {cfg.vocab_size}-token tokenizer."
        )


def prepare_data(cfg: DataConfig, progress: bool = True) -> Path:
    """Prepare tokenizer + shards in `cfg.out_dir` (reused when complete and matching); returns it.
    Progress bars (ours and datasets') only when stderr is a terminal: a log file gets one line."""
    out_dir = Path(cfg.out_dir).expanduser().absolute()
    inputs = _fingerprint_inputs(cfg)
    if _reusable(out_dir, inputs, cfg.overwrite):  # the fingerprint holds tokenizer and vocab_size: checked then
        return out_dir
    if progress and not sys.stderr.isatty():
        progress = False
        what = ", ".join(cfg.train_files) if cfg.train_files else f"the embedded {cfg.corpus!r} corpus"
        print(f"[mhc-lm] preparing {what} -> {out_dir} (tokenizer + shards, once)",
              file=sys.stderr, flush=True)
    if cfg.tokenizer and cfg.vocab_size is not None:  # before reading any data, not on every reuse
        _check_tokenizer_vocab(cfg)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    staging = staging_name(out_dir)
    staging.mkdir()
    t0 = time.time()
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        (staging / "cache").mkdir()
        skipped: dict[str, int] = {}
        train, val, streamed = _load_splits(cfg, staging / "cache", skipped)
        # a Hub stream with local data.val_files: the whole stream is train (no hash split of it)
        stream_cfg = replace(cfg, val_fraction=0.0) if (streamed and val is not None) else cfg
        tok_dir = staging / "tokenizer"
        new_vocab = cfg.vocab_size if cfg.vocab_size is not None else DEFAULT_VOCAB_SIZE
        if cfg.tokenizer:
            import_tokenizer(cfg.tokenizer, tok_dir)
            tok_source = cfg.tokenizer
        else:
            train_sentencepiece(_tokenizer_texts(train, stream_cfg, streamed), new_vocab, tok_dir,
                                cfg.tokenizer_train_chars, cfg.seed)
            probes = [ROUND_TRIP_PROBE] + (list(val.select(range(min(3, len(val))))["text"]) if val is not None else [])
            check_encoder_agreement(tok_dir, probes)
            tok_source = f"sentencepiece BPE (byte fallback), vocab_size={new_vocab}"
        tok = load_tokenizer(tok_dir)
        vocab_size = tokenizer_vocab_size(tok)
        dtype = choose_dtype(vocab_size, cfg.token_dtype)
        encoder = DocumentEncoder(tok_dir)
        if streamed:
            splits = _write_stream(train, encoder, staging, dtype, stream_cfg, progress)
        else:
            splits = {"train": _write_split(train, "train", encoder, staging, dtype, cfg, progress)}
        if val is not None:
            splits["val"] = _write_split(val, "val", encoder, staging, dtype, cfg, progress)
        if splits["train"]["tokens"] == 0:
            raise ValueError(f"{inputs['sources']['train']}: the train split holds no tokens. Fix: check the input.")
        shutil.rmtree(staging / "cache")
        meta = {
            "format_version": FORMAT_VERSION,
            "vocab_size": vocab_size,
            "dtype": dtype,
            "tokenizer": {
                "sha256": tokenizer_sha256(tok_dir), "source": tok_source, "vocab_size": vocab_size,
                "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id, "unk_token_id": tok.unk_token_id,
            },
            "splits": splits,
            "sources": inputs["sources"],
            "rows_without_text": skipped,  # rows dropped because their text was missing or null, per source key
            "config": to_dict(cfg),
            "fingerprint_inputs": inputs,
            "seconds": round(time.time() - t0, 2),
        }
        tmp = staging / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, staging / "meta.json")
        _publish(staging, out_dir, inputs, cfg.overwrite)
    finally:
        if bars_were_on and not progress:
            datasets.enable_progress_bars()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
