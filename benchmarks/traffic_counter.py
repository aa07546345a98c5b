"""Byte counter for Triton kernels run by the interpreter (`TRITON_INTERPRET=1`, CPU tensors).

Importing this module sets TRITON_INTERPRET=1, so import it before triton (Triton fixes
interpreted-or-compiled when a kernel is decorated). Inside `counting()` every `tl.load` /
`tl.store` of every launch is recorded per kernel argument: the bytes it moves (masked-in
elements x element size; masked-out lanes move nothing on a GPU either) and which elements it
touched, so each argument gets

    moved:  bytes requested by all loads (stores), re-reads counted each time;
    unique: bytes of distinct elements loaded (stored): what DRAM would see if every re-read
            hit in cache.

Scalar loads (`tl.load(ptr)`) count as one element. Atomics and tensor-descriptor loads are not
counted (the mixing kernels use neither); an access outside every tensor argument raises.

How: `InterpreterBuilder.create_masked_load` / `create_masked_store` (which the unmasked forms
call too) are wrapped, and `GridExecutor.__call__` (one kernel launch) is wrapped to learn the
kernel's name and the address range of each tensor argument. Checked against triton 3.9.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter as _interp  # noqa: E402


@dataclasses.dataclass
class ArgTraffic:
    ptr: int  # address of the tensor argument's first element
    nbytes: int  # its size
    itemsize: int
    loaded: int = 0
    stored: int = 0
    load_seen: np.ndarray | None = None  # element bitmaps for the unique counts
    store_seen: np.ndarray | None = None

    @property
    def unique_loaded(self) -> int:
        return 0 if self.load_seen is None else int(self.load_seen.sum()) * self.itemsize

    @property
    def unique_stored(self) -> int:
        return 0 if self.store_seen is None else int(self.store_seen.sum()) * self.itemsize


@dataclasses.dataclass
class Launch:
    kernel: str
    grid: tuple
    args: dict[str, ArgTraffic]

    def total(self, what: str) -> int:
        return sum(getattr(a, what) for a in self.args.values())


class _Recorder:
    def __init__(self):
        self.launches: list[Launch] = []
        self.ranges: list[tuple[int, int, str]] = []  # (start, end, name) of the current launch

    def begin(self, fn, grid, args, kwargs):
        bound = inspect.getcallargs(fn, *args, **{k: v for k, v in kwargs.items() if k in inspect.getfullargspec(fn).args})
        traffic, ranges = {}, []
        for name, value in bound.items():
            if isinstance(value, torch.Tensor):
                start = value.data_ptr()
                nbytes = value.numel() * value.element_size()
                traffic[name] = ArgTraffic(ptr=start, nbytes=nbytes, itemsize=value.element_size())
                ranges.append((start, start + nbytes, name))
        self.launches.append(Launch(getattr(fn, "__name__", str(fn)), grid, traffic))
        self.ranges = sorted(ranges)

    def access(self, ptrs, mask, store: bool):
        launch = self.launches[-1]
        addr = np.asarray(ptrs.data).astype(np.uint64).ravel()
        m = np.broadcast_to(np.asarray(mask.data, dtype=bool), np.shape(ptrs.data)).ravel()
        addr = addr[m]
        if addr.size == 0:
            return
        elem = ptrs.get_element_ty().primitive_bitwidth // 8
        starts = np.array([r[0] for r in self.ranges], dtype=np.uint64)
        which = np.searchsorted(starts, addr, side="right") - 1
        for k in np.unique(which):
            sel = addr[which == k]
            start, end, name = self.ranges[int(k)] if k >= 0 else (0, 0, "?")
            if k < 0 or sel.max() + elem > end:
                raise RuntimeError(f"{launch.kernel}: access outside every tensor argument")
            a = launch.args[name]
            idx = ((sel - np.uint64(start)) // np.uint64(a.itemsize)).astype(np.int64)
            seen_name = "store_seen" if store else "load_seen"
            if getattr(a, seen_name) is None:
                setattr(a, seen_name, np.zeros(a.nbytes // a.itemsize, dtype=bool))
            getattr(a, seen_name)[idx] = True
            if store:
                a.stored += sel.size * elem
            else:
                a.loaded += sel.size * elem


@contextlib.contextmanager
def counting():
    """Yields the list of `Launch` records filled by every interpreted launch inside the block."""
    rec = _Recorder()
    builder, executor = _interp.InterpreterBuilder, _interp.GridExecutor
    orig_load, orig_store, orig_call = builder.create_masked_load, builder.create_masked_store, executor.__call__

    def load(self, ptrs, mask, other, cache_policy, is_volatile):
        rec.access(ptrs, mask, store=False)
        return orig_load(self, ptrs, mask, other, cache_policy, is_volatile)

    def store(self, ptrs, value, mask, cache_policy):
        rec.access(ptrs, mask, store=True)
        return orig_store(self, ptrs, value, mask, cache_policy)

    def call(self, *args, **kwargs):
        rec.begin(self.fn, self.grid, args, kwargs)
        return orig_call(self, *args, **kwargs)

    builder.create_masked_load, builder.create_masked_store, executor.__call__ = load, store, call
    try:
        yield rec.launches
    finally:
        builder.create_masked_load, builder.create_masked_store, executor.__call__ = orig_load, orig_store, orig_call


# ------------------------------------------------------------------ a kernel with a known answer
@triton.jit
def _copy_kernel(X, Y, N, READS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.load(X + offs, mask=mask, other=0.0)
    for _ in tl.static_range(READS - 1):  # re-reads of the same elements
        v = tl.maximum(v, tl.load(X + offs, mask=mask, other=0.0))
    tl.store(Y + offs, v, mask=mask)


def copy_traffic(numel: int, dtype: torch.dtype = torch.float32, reads: int = 1, block: int = 256) -> Launch:
    """Runs y = x through `_copy_kernel` (x read `reads` times, the last block partly masked) and
    returns its record: a plain copy moves exactly numel x itemsize in and out."""
    x = torch.randn(numel).to(dtype)
    y = torch.empty_like(x)
    with counting() as launches:
        _copy_kernel[(triton.cdiv(numel, block),)](x, y, numel, READS=reads, BLOCK=block)
    if not torch.equal(x, y):
        raise AssertionError("copy kernel did not copy")
    return launches[-1]
