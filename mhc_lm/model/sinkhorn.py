"""Sinkhorn-Knopp projection onto doubly stochastic matrices (mHC, arXiv 2512.24880, eq. 8-9).

Orientation (DESIGN.md section 1): for H[..., i, j] the *new* stream j is the convex
combination sum_i H[i, j] x[i] of the old streams, so the normalisation applied last is
over the first matrix axis (dim -2: every column sums to 1 exactly); the rows sum to 1 to
within the convergence of the iteration. This is the transpose convention of DeepSeek's
TileKernels and of Megatron-LM after its fix.

Numerics follow the reference kernels:
    P = softmax(L, dim=-1) + eps             # exp with the row max subtracted + the first row norm.
    P = P / (P.sum(-2) + eps)                 # column normalisation
    repeat iters - 1 times: rows, then columns
so one iteration = one row and one column normalisation and `iters=0` still returns a valid
matrix, never raw logits: P0 normalised over its columns only (each new stream a convex
combination of the old ones, as for every iters; rows are then only approximately 1).
Everything runs in float32 (or float64 if given)
whatever the autocast dtype.
"""

from __future__ import annotations

import torch

DEFAULT_SINKHORN_ITERS = 20
SINKHORN_EPS = 1e-6
FUSED_MAX_N = 16
"""Largest n the fused kernel holds in registers; larger matrices use the reference."""


def sinkhorn_reference(logits: torch.Tensor, iters: int = DEFAULT_SINKHORN_ITERS, eps: float = SINKHORN_EPS) -> torch.Tensor:
    """Pure-PyTorch Sinkhorn-Knopp on the last two dims; autograd through the unrolled loop."""
    if iters < 0:
        raise ValueError(f"sinkhorn_iters must be >= 0, got {iters}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = torch.softmax(logits.to(dtype), dim=-1) + eps  # (..., n, n), rows sum to 1 (+n*eps)
        if iters == 0:
            return p / p.sum(dim=-2, keepdim=True)
        p = p / (p.sum(dim=-2, keepdim=True) + eps)
        for _ in range(iters - 1):
            p = p / (p.sum(dim=-1, keepdim=True) + eps)
            p = p / (p.sum(dim=-2, keepdim=True) + eps)
    return p


def _fused_sinkhorn():
    try:  # optional Triton kernels; absent in an exported HF folder or without triton
        from mhc_lm.kernels import fused_sinkhorn  # type: ignore

        return fused_sinkhorn
    except ImportError:
        return None


def sinkhorn(logits: torch.Tensor, iters: int = DEFAULT_SINKHORN_ITERS, eps: float = SINKHORN_EPS, fused: bool = False) -> torch.Tensor:
    """Doubly stochastic Sinkhorn-Knopp scaling of exp(logits) over the last two dims.

    The dispatch point for the fused kernel: with `fused=True` on a CUDA tensor and the
    `mhc_lm.kernels` package importable, the Triton kernel runs (same maths, recomputing
    backward); otherwise the reference above.
    """
    if fused and logits.is_cuda and logits.shape[-1] <= FUSED_MAX_N:
        kernel = _fused_sinkhorn()
        if kernel is not None:
            return kernel(logits, iters, eps)
    return sinkhorn_reference(logits, iters, eps)
