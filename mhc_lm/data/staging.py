"""Staging folders of `prepare_data`: `.NAME.partial-HOST-PID-RANDOM` next to the output folder, built
there and renamed into place when complete; those left behind by a killed run (its process gone on
this host, or unchanged for a day) are removed by the next prepare of NAME."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from glob import escape as glob_escape
from pathlib import Path

STALE_PARTIAL_SECONDS = 24 * 3600


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def staging_name(out_dir: Path) -> Path:
    """A fresh `.NAME.partial-HOST-PID-RANDOM` path next to out_dir."""
    return out_dir.with_name(f".{out_dir.name}.partial-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _newest_mtime(folder: Path) -> float:
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def remove_stale_partials(out_dir: Path) -> list[Path]:
    """Delete staging folders of out_dir left by killed runs; returns the removed paths.

    A partial named with this host and a pid that no longer runs here is stale. One from another
    host (shared filesystem) or with an older name (no host) is stale only when nothing in it
    changed for STALE_PARTIAL_SECONDS, since its writer may still be running elsewhere.
    """
    if not out_dir.parent.is_dir():
        return []
    host = _host_tag()
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.partial-(?:(?P<host>.+)-)?(?P<pid>\d+)-[0-9a-f]{{8}}")
    removed = []
    for path in out_dir.parent.glob(f".{glob_escape(out_dir.name)}.partial-*"):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        try:
            if match["host"] == host:
                stale = int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
            else:
                stale = time.time() - _newest_mtime(path) > STALE_PARTIAL_SECONDS
        except OSError:  # vanished meanwhile (its writer finished)
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
