"""Fused-or-reference dispatch: the one table of the ops that have a kernel.

    op                 reference (defines the meaning)          CUDA (mhc_lm.kernels)     n <=  CPU (mhc_lm.cpu_kernels)
    mhc_coefficients   stream_ops.mhc_coefficients_reference    fused_mhc_coefficients       8  -
    hc_mix_in          stream_ops.hc_mix_in_reference           -                            8  cpu_hc_mix_in
    mhc_mix_in         stream_ops.mhc_mix_in_reference          -                            8  cpu_mhc_mix_in
    pre_mix            stream_ops.pre_mix_reference             fused_pre_mix                8  cpu_pre_mix
    post_res           stream_ops.post_res_reference            fused_post_res               8  cpu_post_res
    post_res_backward  stream_ops.post_res_backward_reference   fused_post_res_backward      8  cpu_post_res_backward
    sinkhorn           sinkhorn.sinkhorn_reference              fused_sinkhorn              16  cpu_sinkhorn

`dispatch(op, fused, device, n_streams, cpu_kernels=...)` returns the Triton kernel when it is
asked for (`fused_kernels`), the tensors are on CUDA, the kernels import (Triton installed; never
in an exported folder, whose import of `mhc_lm` fails) and n is within the kernel's limit: its
register / shared-memory tiles hold n x n (sinkhorn) or 2n + n^2 (the others) values per token.
On the CPU it returns the numba kernel when `cpu_kernels` (`model.cpu_kernels`) is set and numba
imports (no stream limit: plain loops). Otherwise the reference runs. Both kernel packages are
leaves: they import nothing of the model; the limits live here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .sinkhorn import DEFAULT_SINKHORN_ITERS, SINKHORN_EPS, sinkhorn_reference
from .stream_ops import (
    hc_mix_in_reference,
    mhc_coefficients_reference,
    mhc_mix_in_reference,
    post_res_backward_reference,
    post_res_reference,
    pre_mix_reference,
)


@dataclasses.dataclass(frozen=True)
class FusedOp:
    reference: Callable
    """Pure-PyTorch implementation: the meaning of the op, and what runs without the kernel."""
    kernel: str | None
    """Name of the Triton implementation in `mhc_lm.kernels` (None: the reference on CUDA)."""
    max_streams: int
    """Largest n the kernel is built for; beyond it the reference runs."""
    kernel_dtypes: tuple[torch.dtype, ...] | None = None
    """Input dtypes the kernel takes (None: any); others run the reference."""
    cpu_kernel: str | None = None
    """Name of the numba implementation in `mhc_lm.cpu_kernels` (None: the reference on CPU)."""


FUSED_OPS: dict[str, FusedOp] = {
    "mhc_coefficients": FusedOp(mhc_coefficients_reference, "fused_mhc_coefficients", 8),
    "pre_mix": FusedOp(pre_mix_reference, "fused_pre_mix", 8, cpu_kernel="cpu_pre_mix"),
    # HC's dynamic coefficients + pre-mix as one op (on CUDA: the reference, with the fused pre-mix)
    "hc_mix_in": FusedOp(hc_mix_in_reference, None, 8, cpu_kernel="cpu_hc_mix_in"),
    # mHC's coefficients + Sinkhorn + pre-mix (sinkhorn map, float32) as one op: the CPU kernel only;
    # elsewhere the model composes the ops above, each fused where it can be (`residual_mhc.py`)
    "mhc_mix_in": FusedOp(mhc_mix_in_reference, None, 8, cpu_kernel="cpu_mhc_mix_in"),
    "post_res": FusedOp(post_res_reference, "fused_post_res", 8, cpu_kernel="cpu_post_res"),
    "post_res_backward": FusedOp(post_res_backward_reference, "fused_post_res_backward", 8,
                                 cpu_kernel="cpu_post_res_backward"),
    # float64 logits keep float64 in the reference; the Triton kernel computes in float32 (the CPU one in either)
    "sinkhorn": FusedOp(sinkhorn_reference, "fused_sinkhorn", 16,
                        kernel_dtypes=(torch.float32, torch.bfloat16, torch.float16), cpu_kernel="cpu_sinkhorn"),
}


def fused_kernel(name: str) -> Callable | None:
    """The Triton kernel of op `name`, or None when `mhc_lm.kernels` cannot be imported."""
    try:  # optional Triton kernels; absent in an exported HF folder or without triton
        import mhc_lm.kernels as kernels  # type: ignore
    except ImportError:
        return None
    name = FUSED_OPS[name].kernel
    return None if name is None else getattr(kernels, name, None)


def cpu_kernel(name: str) -> Callable | None:
    """The numba kernel of op `name`, or None when it has none or `mhc_lm.cpu_kernels` cannot be imported."""
    op = FUSED_OPS[name]
    if op.cpu_kernel is None:
        return None
    try:  # optional numba kernels; absent in an exported HF folder or without numba
        import mhc_lm.cpu_kernels as cpu_kernels  # type: ignore
    except ImportError:
        return None
    return getattr(cpu_kernels, op.cpu_kernel, None)


def dispatch(name: str, fused: bool, device: torch.device, n_streams: int | None = None,
             dtype: torch.dtype | None = None, cpu_kernels: bool = False) -> Callable:
    """The Triton kernel of op `name` when asked for, on CUDA, importable and built for `n_streams`
    streams and `dtype`; the numba kernel on the CPU when `cpu_kernels` and importable; else the
    reference."""
    op = FUSED_OPS[name]
    if cpu_kernels and device.type == "cpu":
        kernel = cpu_kernel(name)
        if kernel is not None:
            return kernel
    if n_streams is not None and n_streams > op.max_streams:
        fused = False
    if dtype is not None and op.kernel_dtypes is not None and dtype not in op.kernel_dtypes:
        fused = False
    if fused and device.type == "cuda":
        kernel = fused_kernel(name)
        if kernel is not None:
            return kernel
    return op.reference


def sinkhorn(logits: torch.Tensor, iters: int = DEFAULT_SINKHORN_ITERS, eps: float = SINKHORN_EPS,
             fused: bool = False, cpu_kernels: bool = False) -> torch.Tensor:
    """Doubly stochastic Sinkhorn-Knopp scaling of exp(logits) over the last two dims
    (`sinkhorn.sinkhorn_reference`); with `fused=True` the Triton kernel, with `cpu_kernels=True` the
    numba one, where `dispatch` allows it (same maths, recomputing backward)."""
    kernel = dispatch("sinkhorn", fused, logits.device, logits.shape[-1], logits.dtype, cpu_kernels)
    return kernel(logits, iters, eps)
