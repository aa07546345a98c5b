"""One trainer per run directory: an OS-level lock (`flock`) on the run directory itself.

The main process of the run (global rank 0, on node 0) takes the lock before anything in the run
directory is written and holds it until `fit` returns; `run_dir/.run.lock` records its pid and
host while it holds it (removed on release, so a refused start leaves the folder as it was).
The other ranks, on every node, wait for rank 0's answer and then go on, or raise the same error:
so the lock is per run, not per process or node, and no rank writes before it is held. A second
trainer started into the same directory gets `RunLockError` naming the holder's pid and host.

The kernel releases a flock when its holder dies, kill -9 included, so no stale lock is left
behind (a `.run.lock` left by a killed trainer only names the dead holder, and is replaced). (flock on NFS is emulated with POSIX locks by Linux >= 2.6.12,
which also work across hosts.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from mhc_lm.config_utils import ConfigError

LOCK_FILE = ".run.lock"


class RunLockError(ConfigError):
    """The run directory is held by another trainer."""


class RunLock:
    """A held lock; `release()` (idempotent) unlocks it."""

    def __init__(self, run_dir: Path, fd: int, created: bool):
        self.run_dir, self._fd, self._created = run_dir, fd, created

    def release(self) -> None:
        if self._fd is not None:
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
            if self._created:  # a run refused before writing anything leaves no empty folder behind
                try:
                    self.run_dir.rmdir()
                except OSError:  # not empty: the run wrote into it
                    pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    except (OSError, ValueError, AttributeError):
        return f"another process; {path} naming it is not written yet"


def acquire(run_dir: Path) -> RunLock:
    """Take the lock of `run_dir` (created if missing) in this process, or raise RunLockError."""
    run_dir = Path(run_dir)
    while True:
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockError(f"run_dir={run_dir} is in use by another trainer ({_holder(run_dir / LOCK_FILE)}): "
                               "one run directory takes one trainer. Wait for it to finish, stop it, or choose "
                               "another run_dir") from None
        try:
            same = os.stat(run_dir).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # removed (and maybe recreated) by a refused trainer meanwhile: lock the folder now there
    lock = RunLock(run_dir, fd, created)
    try:
        tmp = run_dir / (LOCK_FILE + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        tmp.replace(run_dir / LOCK_FILE)
    except BaseException:
        lock.release()
        raise
    return lock


def acquire_for_run(accelerator, run_dir: Path) -> RunLock | None:
    """Collective: the main process takes the lock; every rank returns (None on the others) or raises
    the main process's error."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = acquire(run_dir)
        except (RunLockError, OSError) as err:
            error = err
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([str(error) if error is not None else None], from_process=0)[0]
        if message is not None and error is None:
            raise RunLockError(message)
    if error is not None:
        raise error
    return lock
