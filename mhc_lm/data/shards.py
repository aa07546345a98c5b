"""Packed token shards: flat binary files of token ids plus one `meta.json`.

Layout of a prepared folder (see docs/data.md):

    out_dir/meta.json            vocab, dtype, tokenizer checksum, per-split shard list
    out_dir/tokenizer/           HF tokenizer (AutoTokenizer.from_pretrained loads it)
    out_dir/train_00000.bin ...  token ids, documents concatenated, each ending in EOS
    out_dir/val_00000.bin ...

A shard is `np.ndarray(tokens,)` of `meta["dtype"]` written raw (native little-endian), so
`np.memmap` reads it with no header; its byte size must equal tokens * itemsize.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DTYPE_LIMITS = {"uint16": 2**16, "uint32": 2**32}
REPREPARE = "Fix: re-run launch/prepare_data.py with data.overwrite=true (or delete {out_dir})."


def choose_dtype(vocab_size: int, requested: str = "auto") -> str:
    """uint16 when every id fits, else uint32; a requested dtype too small for the vocab is an error."""
    if requested == "auto":
        requested = "uint16" if vocab_size <= DTYPE_LIMITS["uint16"] else "uint32"
    if requested not in DTYPE_LIMITS:
        raise ValueError(f"data.token_dtype={requested!r} is not one of {sorted(DTYPE_LIMITS)} or 'auto'")
    if vocab_size > DTYPE_LIMITS[requested]:
        raise ValueError(
            f"vocab of {vocab_size} tokens does not fit data.token_dtype={requested} "
            f"(ids up to {DTYPE_LIMITS[requested] - 1}). Fix: set data.token_dtype=uint32 or auto"
        )
    return requested


class ShardWriter:
    """Append token arrays to `{split}_{i:05d}.bin` files of at most `shard_tokens` tokens.

    Each shard is written under a `.tmp` name and renamed when full, so a file with the final
    name is always complete. `close()` returns the shard list for meta.json.
    """

    def __init__(self, out_dir: Path, split: str, dtype: str, shard_tokens: int):
        self.out_dir, self.split, self.shard_tokens = Path(out_dir), split, shard_tokens
        self.dtype = np.dtype(dtype)
        self.limit = DTYPE_LIMITS[dtype]
        self.shards: list[dict] = []
        self._file = None
        self._count = 0
        self.documents = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._name = name
        self._file = open(self.out_dir / (name + ".tmp"), "wb")
        self._count = 0

    def _finish(self) -> None:
        self._file.close()
        os.replace(self.out_dir / (self._name + ".tmp"), self.out_dir / self._name)
        self.shards.append({"file": self._name, "tokens": self._count})
        self._file = None

    def write(self, ids: np.ndarray, documents: int = 0) -> None:
        ids = np.asarray(ids)
        if ids.size and (int(ids.max()) >= self.limit or int(ids.min()) < 0):
            raise ValueError(f"token id {int(ids.max())} does not fit {self.dtype.name} in split {self.split}")
        ids = ids.astype(self.dtype, copy=False)
        self.documents += documents
        while ids.size:
            if self._file is None:
                self._open()
            take = min(ids.size, self.shard_tokens - self._count)
            ids[:take].tofile(self._file)
            self._count += take
            ids = ids[take:]
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> dict:
        if self._file is not None:
            self._finish()
        return {
            "tokens": sum(s["tokens"] for s in self.shards),
            "documents": self.documents,
            "shards": self.shards,
        }


def read_meta(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: prepare the data first (launch/prepare_data.py --config ...)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}). " + REPREPARE.format(out_dir=out_dir)) from err


class PackedTokens:
    """Memory-mapped token stream of one split: `len(ds)` tokens, `ds[a:b]`, `ds.windows(starts, n)`.

    Validates on open that every shard exists with exactly the byte size its metadata records,
    and that the tokenizer in `out_dir/tokenizer` is the one the shards were made with. Every
    read (`ds[a:b]`, `ds.windows`) checks its ids are < meta.json's vocab_size (one max() per
    read), so a corrupt shard is an error naming the file and offset, not an embedding crash.
    """

    def __init__(self, out_dir: str | Path, split: str = "train"):
        self.out_dir = Path(out_dir)
        self.meta = read_meta(self.out_dir)
        self.split = split
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise ValueError(
                f"{self.out_dir / 'meta.json'} has no split {split!r} (has {sorted(splits)}). "
                "Fix: set data.val_fraction > 0 or data.val_files to get a 'val' split."
            )
        self.vocab_size = int(self.meta["vocab_size"])
        fix = REPREPARE.format(out_dir=self.out_dir)
        try:
            self.dtype = np.dtype(choose_dtype(self.vocab_size, str(self.meta["dtype"])))
        except ValueError as err:  # e.g. a hand-edited meta.json: uint16 shards for a 70k vocab
            raise ValueError(f"{self.out_dir / 'meta.json'}: {err}. {fix}") from None
        self._check_tokenizer(fix)
        self.arrays: list[np.ndarray] = []
        self.files: list[Path] = []  # path of each entry of self.arrays
        for shard in splits[split]["shards"]:
            path = self.out_dir / shard["file"]
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} listed in meta.json is missing. {fix}")
            expected = int(shard["tokens"]) * self.dtype.itemsize
            actual = path.stat().st_size
            if actual != expected:
                raise ValueError(
                    f"shard {path} has {actual} bytes but meta.json records {shard['tokens']} "
                    f"{self.dtype.name} tokens ({expected} bytes): truncated or overwritten. {fix}"
                )
            if shard["tokens"]:
                self.arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(int(shard["tokens"]),)))
                self.files.append(path)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])  # (n_shards + 1,)
        if int(self.offsets[-1]) != int(splits[split]["tokens"]):
            raise ValueError(f"{self.out_dir / 'meta.json'}: split {split} token count disagrees with its shards. {fix}")

    def _check_tokenizer(self, fix: str) -> None:
        from .tokenizer import tokenizer_sha256

        tok_dir = self.out_dir / "tokenizer"
        recorded = self.meta.get("tokenizer", {}).get("sha256")
        if recorded and tok_dir.is_dir() and tokenizer_sha256(tok_dir) != recorded:
            raise ValueError(
                f"{tok_dir} is not the tokenizer the shards in {self.out_dir} were made with "
                f"(checksum differs from meta.json). {fix}"
            )

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_documents(self) -> int:
        return int(self.meta["splits"][self.split]["documents"])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("PackedTokens supports slices only: ds[start:stop]")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("PackedTokens slices must have step 1")
        out = self._read(start, max(stop - start, 0))
        self._check_ids(out[None, :], np.array([start]))
        return out

    def _check_ids(self, ids: np.ndarray, starts: np.ndarray) -> None:
        """Raise ValueError naming the shard and offset when a row of `ids` (read at `starts`) has an id >= vocab."""
        if not ids.size or int(ids.max()) < self.vocab_size:
            return
        row, col = np.unravel_index(int(np.argmax(ids >= self.vocab_size)), ids.shape)
        pos = int(starts[row]) + int(col)
        shard = int(np.searchsorted(self.offsets, pos, side="right")) - 1
        local = pos - int(self.offsets[shard])
        raise ValueError(
            f"shard {self.files[shard]} holds token id {int(ids[row, col])} at token {local} (byte "
            f"{local * self.dtype.itemsize}), but {self.out_dir / 'meta.json'} records vocab_size={self.vocab_size}: "
            f"the shard is corrupt or was not written for this data folder. {REPREPARE.format(out_dir=self.out_dir)}"
        )

    def _read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length), possibly across shard boundaries."""
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        local = start - int(self.offsets[shard]) if self.arrays else 0
        if shard < len(self.arrays) and local + length <= len(self.arrays[shard]):
            return np.asarray(self.arrays[shard][local : local + length])
        parts, need = [], length
        while need > 0 and shard < len(self.arrays):
            piece = self.arrays[shard][local : local + need]
            parts.append(np.asarray(piece))
            need -= len(piece)
            shard, local = shard + 1, 0
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Stack of windows ds[s : s + length] for each s in `starts` -> (len(starts), length)."""
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and (starts.min() < 0 or starts.max() + length > len(self)):
            raise IndexError(f"window [{starts.max()}, {starts.max() + length}) is outside the {len(self)} tokens")
        if len(self.arrays) == 1:  # fast path: one fancy-indexed read
            idx = starts[:, None] + np.arange(length)[None, :]  # (B, length)
            out = np.asarray(self.arrays[0][idx])
        else:
            out = np.stack([self._read(int(s), length) for s in starts]) if starts.size else np.zeros((0, length), self.dtype)
        self._check_ids(out, starts)  # one max() over the batch: corrupt ids never reach the embedding
        return out


def check_compatible(meta_or_dataset, model_vocab_size: int, eos_token_id: int | None = None) -> None:
    """Raise ValueError when token ids in the shards could not be fed to a model.

    `meta_or_dataset` is a PackedTokens, a meta dict, or a prepared folder path. Ids must be
    below `model_vocab_size` (else they index past the embedding, silently on some backends),
    and when given, the model's eos id must be the one that ends documents in the shards.
    """
    if isinstance(meta_or_dataset, PackedTokens):
        meta, where = meta_or_dataset.meta, meta_or_dataset.out_dir
    elif isinstance(meta_or_dataset, dict):
        meta, where = meta_or_dataset, "the prepared data"
    else:
        meta, where = read_meta(meta_or_dataset), meta_or_dataset
    data_vocab = int(meta["vocab_size"])
    if data_vocab > model_vocab_size:
        given = (meta.get("config") or {}).get("tokenizer")
        other = (f"a tokenizer of at most {model_vocab_size} tokens in place of data.tokenizer={given!r}" if given
                 else f"data.vocab_size <= {model_vocab_size}")
        raise ValueError(
            f"{where} was tokenized with a vocabulary of {data_vocab} tokens (tokenizer sha256 "
            f"{meta.get('tokenizer', {}).get('sha256', '?')[:12]}) but the model has vocab_size={model_vocab_size}: "
            f"ids up to {data_vocab - 1} would index past its embedding. Fix: set the model's "
            f"vocab_size >= {data_vocab}, or re-prepare the data with {other} into a new data.out_dir."
        )
    data_eos = meta.get("tokenizer", {}).get("eos_token_id")
    if eos_token_id is not None and data_eos is not None and int(data_eos) != int(eos_token_id):
        raise ValueError(
            f"{where} ends documents with eos id {data_eos} but the model config has eos_token_id={eos_token_id}. "
            f"Fix: set the model's eos_token_id={data_eos} (see {where}/meta.json 'tokenizer')."
        )
