"""Launch helpers shared by the mixing kernels: device checks and block sizes.

Two regimes:
- CUDA: small token blocks (many programs, memory-bound streaming over C);
- the Triton interpreter (`TRITON_INTERPRET=1`, CPU tensors, used by the tests): every
  program instance costs ~18 ms of Python, so each program takes as many rows as possible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import torch
import triton

# Whether the @triton.jit functions of this package were built as interpreted functions:
# triton decides at decoration time (module import), so this is frozen with the import.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def interpreted() -> bool:
    return INTERPRETED


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """Clear error for tensors the kernels cannot run on (CPU without the interpreter, mixed devices)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"mhc_lm.kernels.{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cuda":
        return
    if device.type == "cpu" and INTERPRETED:
        return
    raise RuntimeError(
        f"mhc_lm.kernels.{name}: Triton kernels need CUDA tensors (got {device}). On CPU, set "
        "TRITON_INTERPRET=1 in the environment before importing mhc_lm.kernels, or use the "
        "references in mhc_lm.model.stream_ops / mhc_lm.model.sinkhorn (mhc_lm.model.fused_ops picks them)."
    )


def on_device(t: torch.Tensor):
    """Launch context: Triton launches on the *current* CUDA device and its stream, so make the
    tensors' device current (tensors on cuda:1 while cuda:0 is current would otherwise run on 0)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def next_pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (what the split heuristics fill)."""
    return sm_count(device.index if device.index is not None else torch.cuda.current_device())


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Launch shape of a kernel: BT tokens x BC channels per program, `warps` warps, and `splits`
    programs sharing one reduction loop (their partial sums are added by the caller)."""

    BT: int
    BC: int
    warps: int
    splits: int = 1


def channel_vec(C: int) -> int:
    """Largest power of two <= 8 dividing C. Triton marks an integer argument only as "divisible by
    16" or not, so at C = 1000 or 2056 it cannot prove that stream rows start on 16-byte boundaries
    and falls back to scalar loads; the kernels take this as a constexpr and rewrite
    C = (C // VEC) * VEC, which proves it (16-byte vectors of fp32 need VEC >= 4, of bf16 VEC = 8)."""
    C = int(C)
    return min(8, C & -C) if C > 0 else 1


def mix_blocks(T: int, C: int, n: int, dtype: torch.dtype, device: torch.device, backward: bool) -> Blocks:
    """Block shape for pre-mix and post + residual (forward: 2-D grid over tokens x channels;
    backward: a loop over channels with per-split partial reductions).

    CUDA: one token per program and BC = 32 * warps * vec channels, vec = 16 bytes / itemsize, so
    every thread loads 16-byte vectors of each stream and the n-stream axis stays inside the
    thread: the per-token n / n x n mixing needs no shared-memory layout change. Checked with
    ptxas for sm_90 (benchmarks/kernel_resources.py, docs/kernels.md): no spills up to n = 4; the
    post + residual backward spills 8-24 bytes at n = 5..8 (150-170 registers at n = 8).
    The backward splits the channel loop when there are too few tokens to fill the device
    (decoding, small batches). Interpreter: as many tokens and channels per program as allowed.
    """
    if INTERPRETED or device.type != "cuda":
        return Blocks(BT=min(128, next_pow2(T)), BC=min(256, next_pow2(C)), warps=4, splits=1)
    vec = max(1, 16 // torch.empty((), dtype=dtype).element_size())
    warps = 4
    while warps > 1 and 32 * warps * vec > next_pow2(C):  # narrow C: fewer warps, same vectors
        warps //= 2
    BC = 32 * warps * vec
    splits = 1
    if backward:
        chunks = triton.cdiv(C, BC)
        splits = max(1, min(chunks, triton.cdiv(8 * device_sms(device), T)))
    return Blocks(BT=1, BC=BC, warps=warps, splits=splits)
