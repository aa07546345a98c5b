"""Calls of the numba kernels that may compile or touch numba's on-disk cache, one process at a time.

numba's `cache=True` is not safe across processes: saving an entry reads the cache's index, picks
a data file name and writes index and data as separate steps, so two processes that compile at
once (the ranks of a 2-process run on a fresh machine) can leave an index entry pointing at the
other's object code; loading that crashes the process. A kernel's first call with a given
argument signature is where numba loads or compiles and saves, so that call holds an exclusive
`flock` on a file in the cache folder; later calls with that signature take no lock. The second
process then finds the first one's entries and only loads them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock, numba's own behaviour
    fcntl = None

LOCK_NAME = "mhc_lm_numba_cache.lock"
_seen: set = set()
_in_process = threading.Lock()


def _lock_dir(kernel) -> str:
    cache = getattr(kernel, "_cache", None)
    path = getattr(cache, "_cache_path", None)  # numba's folder for this function's cache files
    return path if path and os.access(path, os.W_OK) else tempfile.gettempdir()


@contextlib.contextmanager
def cache_lock(kernel):
    """Exclusive across threads and processes on this machine while held (the lock file is never
    deleted: deleting it would let a waiting process lock a file that a new one no longer sees)."""
    with _in_process:
        if fcntl is None:
            yield
            return
        try:
            os.makedirs(_lock_dir(kernel), exist_ok=True)
            fd = os.open(os.path.join(_lock_dir(kernel), LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # nowhere to put a lock: numba's own (unlocked) behaviour
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def run(kernel, *args):
    """kernel(*args), under `cache_lock` the first time this process calls it with these argument
    types (dtype and rank of each array, the type of each scalar)."""
    key = (kernel, *((a.dtype, a.ndim) if hasattr(a, "ndim") else type(a) for a in args))
    if key in _seen:
        return kernel(*args)
    with cache_lock(kernel):
        out = kernel(*args)
    _seen.add(key)
    return out
