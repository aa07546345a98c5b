"""Fused Triton kernels for HC/mHC stream mixing (issue 7); see docs/kernels.md.

Importing this package raises ImportError when Triton is missing, which the model's guarded
dispatch (`mhc_lm.model.stream_ops.dispatch`, `mhc_lm.model.sinkhorn.sinkhorn`) reads as
"no kernels": the torch references then run. Each kernel has the signature, semantics and
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
