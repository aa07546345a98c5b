"""Compile (or load) every CPU kernel once, for the signatures a float32 training run uses, so that
the runs that follow only load numba's cache.

    python -m mhc_lm.cpu_kernels.warm          # e.g. before a sweep, or in a machine image
    python -m mhc_lm.cpu_kernels.warm --background   # the same at the lowest CPU priority

The quickstart starts it (`--background`) while it prepares the data and trains standard, which
uses no kernel: the ~30 s of compiling (once per machine; numba's parallel loops compile slowly)
then fills the time standard's two threads leave idle instead of adding to hc's and mhc's runs. A run that reaches a kernel while this process still compiles it waits on the
cache lock (`cache_lock.py`) and then loads what was saved. Each kernel runs forward and backward
on a few tokens, through the same torch ops as the model (so with the same argument types).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .hc_ops import cpu_hc_mix_in
from .mhc_ops import cpu_mhc_mix_in
from .ops import cpu_post_res, cpu_post_res_backward, cpu_pre_mix, cpu_sinkhorn


def warm(n: int = 4, channels: int = 8, tokens: int = 3) -> float:
    """Run every kernel once (float32, forward and backward); returns the seconds it took."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, n, channels, generator=g, requires_grad=True)
    # in the order the quickstart's runs need them: hc (post + residual, its mix-in), then mhc
    f, h_res, h_post = torch.randn(tokens, channels, generator=g), torch.rand(tokens, n, n), torch.rand(tokens, n)
    cpu_post_res(x.detach(), f, h_res, h_post)
    cpu_post_res_backward(x.detach(), f, h_res, h_post, torch.randn(tokens, n, channels, generator=g))
    params = [torch.randn(n), torch.randn(n, n), torch.randn(n), torch.ones(channels), torch.randn(channels, n + 2),
              torch.full((1,), 0.5), torch.full((1,), 0.5)]
    params = [p.requires_grad_() for p in params]
    outs = cpu_hc_mix_in(x, *params, eps=1e-6, stream_grad=True)
    sum(o.sum() for o in outs).backward()
    K = 2 * n + n * n  # mHC's mix-in (sinkhorn map), then the kernels other maps and dtypes use
    params = [torch.randn(n * channels, K, generator=g), torch.rand(3, generator=g), torch.randn(K, generator=g)]
    outs = cpu_mhc_mix_in(x, *[p.requires_grad_() for p in params], stream_grad=True)
    sum(o.sum() for o in outs).backward()
    h_pre = torch.rand(tokens, n, generator=g, requires_grad=True)
    cpu_pre_mix(x, h_pre).sum().backward()
    logits = torch.randn(tokens, n, n, generator=g, requires_grad=True)
    cpu_sinkhorn(logits, 20, 1e-6).sum().backward()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", action="store_true",
                        help="lowest CPU priority (nice 19): compile in the time the foreground leaves idle")
    if parser.parse_args(argv).background:
        try:
            os.nice(19)
        except (AttributeError, OSError):
            pass
    torch.set_num_threads(1)
    print(f"[mhc-lm] CPU kernels compiled or loaded in {warm():.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
