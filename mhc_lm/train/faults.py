"""Faults turned into the documented exit codes instead of tracebacks.

- Divergence found outside the loss / gradient-norm check (the stability probe) is a divergence:
  see `mhc_lm.metrics.non_finite`.
- A write that fails on a full disk, a read-only filesystem or a permission error is a
  `WriteFault` (exit 2, one line): the path, the reason, and the last complete checkpoint.
  Partial files are removed by the writer that raised it (checkpoint `.tmp` folders, export
  `.tmp` folders); the run directory otherwise stays as it was, so a rerun once space is freed
  resumes from that checkpoint bit-exactly.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


# errno values that are the user's environment, not a bug
WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}
# OS errors quoted in the text of a library's error (safetensors: "IoError(Os { code: 28, ... })")
_STATED = (("No space left on device", "no space left on device"), ("StorageFull", "no space left on device"),
           ("Disk quota exceeded", "disk quota exceeded"), ("Read-only file system", "read-only file system"),
           ("ReadOnlyFilesystem", "read-only file system"))
# how torch's zip writer reports a short write, without the errno
_SHORT_WRITE = ("unexpected pos", "file write failed", "failed to write")
LOW_SPACE_BYTES = 64 * 2**20


class WriteFault(OSError):
    """A file of the run could not be written for a reason of the environment (exit code 2)."""


def write_cause(err: BaseException, path: Path | None = None) -> str | None:
    """The environment reason behind `err` (an OSError with a known errno anywhere in its chain, or
    a short-write error of torch / safetensors while the disk holding `path` is nearly full), else None."""
    seen, e = set(), err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return WRITE_ERRNOS[e.errno]
        e = e.__cause__ or e.__context__
    text = str(err)
    for needle, reason in _STATED:  # safetensors / torch errors quoting the OS error
        if needle in text:
            return reason
    if path is not None and any(s in text for s in _SHORT_WRITE):  # the errno is lost: look at the disk
        try:
            if shutil.disk_usage(_existing(Path(path))).free < LOW_SPACE_BYTES:
                return "no space left on device"
        except OSError:
            pass
    return None


def _existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def write_fault(err: BaseException, path: Path, run_dir: Path | None = None,
                last: Path | None = None) -> WriteFault | None:
    """A WriteFault naming `path`, the reason and (for a write of the run in `run_dir`) its last
    complete checkpoint `last`, or None if `err` is not an environment write error."""
    reason = write_cause(err, path)
    if reason is None:
        return None
    code = next((k for k, v in WRITE_ERRNOS.items() if v == reason), errno.EIO)
    tail = (f"; last complete checkpoint: {last or 'none'}; partial files removed, free space (or fix the "
            "permissions) and rerun the same command to resume") if run_dir is not None else ""
    what = f"{path}" if code in (errno.EACCES, errno.EPERM) else f"writing {path} failed"  # reads get EACCES too
    return WriteFault(code, f"{reason}: {what}{tail}")


def as_write_fault(err: OSError, run_dir: Path | None = None, last: Path | None = None) -> WriteFault | None:
    """`err` itself if it is a WriteFault, else `write_fault` for the file it names (or run_dir)."""
    if isinstance(err, WriteFault):
        return err
    return write_fault(err, Path(err.filename or run_dir or "."), run_dir, last)


def remove_partial(path: Path) -> None:
    """Best-effort removal of a partial file or folder (a full disk may refuse nothing here)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass
