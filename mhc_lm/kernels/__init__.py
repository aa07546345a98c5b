"""Fused Triton kernels for HC/mHC stream mixing; see docs/kernels.md.

A leaf package: it imports nothing of `mhc_lm`. Importing it raises ImportError when Triton is
missing, which the model's guarded dispatch (`mhc_lm.model.fused_ops`, whose table also holds
each kernel's stream-count limit) reads as "no kernels": the torch references then run. Each kernel has the signature, semantics and
output dtypes of its reference and is a `torch.library.custom_op` with fake and autograd
registrations, so it works under `torch.compile`.
"""

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"mhc_lm.kernels needs Triton (pip install 'mhc-lm[triton]'): {exc}") from exc

from .coefficients import fused_mhc_coefficients
from .launch import INTERPRETED
from .sinkhorn import fused_sinkhorn
from .stream_mix import fused_post_res, fused_post_res_backward, fused_pre_mix

__all__ = ["fused_sinkhorn", "fused_mhc_coefficients", "fused_pre_mix", "fused_post_res", "fused_post_res_backward", "INTERPRETED"]
