"""Atomic file writes: the text goes to a temporary sibling (`.NAME.PID.tmp`), which is then renamed
over NAME, so a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (parent folders made); no temporary file is left behind,
    also when the write fails (e.g. `path` is a directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    """`obj` as indented JSON (keys in insertion order) plus a newline, written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
