"""Launch helpers shared by the mixing kernels: device checks and block sizes.

Two regimes:
- CUDA: small token blocks (many programs, memory-bound streaming over C);
- the Triton interpreter (`TRITON_INTERPRET=1`, CPU tensors, used by the tests): every
  program instance costs ~18 ms of Python, so each program takes as many rows as possible.
"""

from __future__ import annotations

import contextlib
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
        "references in mhc_lm.model.stream_ops / mhc_lm.model.sinkhorn."
    )


def on_device(t: torch.Tensor):
    """Launch context: Triton launches on the *current* CUDA device and its stream, so make the
    tensors' device current (tensors on cuda:1 while cuda:0 is current would otherwise run on 0)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def next_pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def token_block(n_tokens: int, gpu: int, interp: int = 128) -> int:
    """Tokens per program: `gpu` on CUDA, up to `interp` (covering all tokens) in the interpreter."""
    if INTERPRETED:
        return min(interp, next_pow2(n_tokens))
    return gpu


def channel_block(C: int, gpu: int, interp: int = 256) -> int:
    """Channels per inner-loop step."""
    if INTERPRETED:
        return min(interp, next_pow2(C))
    return min(gpu, next_pow2(C))
