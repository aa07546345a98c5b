"""Keep freed host memory for reuse (`train.keep_host_memory`, CPU runs).

torch's CPU allocator has no cache: each activation, gradient and temporary is a fresh `malloc`.
glibc serves large blocks with `mmap` and returns the top of its heap to the system once more than
its trim threshold is free; both thresholds adapt to what it has seen, so whether a step's blocks
are new memory again depends on where small allocations land. New memory faults on first touch,
once per 4 KiB page: a 4 MiB stream tensor is ~1000 page faults, paid in the op that first writes
it (in profiles, `fill_` and `log_softmax_backward` swung by 3-5x between steps). Setting the two
thresholds fixes them: blocks up to 32 MiB (the largest value glibc accepts) come from the heap,
and freed memory is kept for the next step. The process's resident memory then stays at its peak
instead of shrinking between steps, as with a caching allocator. Measured by `benchmarks/train_throughput.py` (which applies the same setting,
`--system-malloc` to compare): docs/performance.md "Host memory".

Only glibc has `mallopt`; elsewhere (macOS, musl) this does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2**31 - 1  # an int: never trim the heap top

_applied: bool | None = None


def mallopt(param: int, value: int) -> bool:
    """glibc's `mallopt(param, value)`; False where it refused or there is no glibc `mallopt`."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(fn(param, value))


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once); True where they were set."""
    global _applied
    if _applied is None:
        _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _applied
