"""CPU kernels for HC/mHC stream mixing (numba); see docs/performance.md.

The CPU counterpart of `mhc_lm.kernels` (Triton, CUDA): the same ops with the same signatures,
semantics and output dtypes as their torch references in `mhc_lm.model` (`stream_ops`,
`sinkhorn`), compiled by numba into loops that make one pass over the stream per op and keep
each token's n x n Sinkhorn iterates in registers and L1. They run where the model's dispatch
(`mhc_lm.model.fused_ops`) picks them: tensors on the CPU and `model.cpu_kernels: true` (the
default). Compiled code is cached on disk (numba `cache=True`: next to these files, or numba's
user-wide cache when that folder is read-only), so a process pays the compile once per machine; the first call per signature holds a file lock
(`cache_lock.py`), since numba's cache is not safe for processes that compile at once.

A leaf package like `mhc_lm.kernels`: it imports nothing of `mhc_lm`. Importing it raises
ImportError when numba is missing or broken, which the dispatch reads as "no CPU kernels".
"""

try:
    import numba  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"mhc_lm.cpu_kernels needs numba (pip install numba): {exc}") from exc

from .hc_ops import cpu_hc_mix_in
from .mhc_ops import cpu_mhc_mix_in
from .ops import cpu_post_res, cpu_post_res_backward, cpu_pre_mix, cpu_sinkhorn

__all__ = ["cpu_sinkhorn", "cpu_pre_mix", "cpu_post_res", "cpu_post_res_backward", "cpu_hc_mix_in", "cpu_mhc_mix_in"]
