"""Kernel-vs-reference checks shared by the CPU (TRITON_INTERPRET=1) tests and the CUDA run.

Each `check_*` builds random inputs, runs the fused kernel and the torch reference on the same
tensors, and asserts forward outputs and gradients w.r.t. every tensor input agree within the
tolerance of the dtype (fp32 tight, bf16 loose). `python tests/kernels/cases.py` runs every
case on CUDA (used by the `gpu`-marked test, in a process without the interpreter).
"""

from __future__ import annotations

import sys

import torch

from mhc_lm.model.sinkhorn import sinkhorn_reference
from mhc_lm.model.stream_ops import mhc_coefficients_reference, post_res_reference, pre_mix_reference

# max |fused - ref| / max(1, max |ref|): fp32 tight, bf16 (inputs/outputs rounded to 8 bits) loose.
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1.0)).item()


def assert_close(got, want, tol: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


def _compare(fused, reference, inputs: list[torch.Tensor], extra: tuple, tol: float, name: str, seed: int):
    """Run both on the same leaf tensors; compare outputs and grads of sum(out * random)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outs_f = fused(*leaves, *extra)
    outs_r = reference(*leaves, *extra)
    outs_f = outs_f if isinstance(outs_f, tuple) else (outs_f,)
    outs_r = outs_r if isinstance(outs_r, tuple) else (outs_r,)
    gen = torch.Generator().manual_seed(seed + 1)
    cots = [torch.randn(o.shape, generator=gen).to(o) for o in outs_r]
    for k, (a, b) in enumerate(zip(outs_f, outs_r)):
        assert_close(a, b, tol, f"{name} forward output {k}")
    grads_f = torch.autograd.grad(outs_f, leaves, cots)
    grads_r = torch.autograd.grad(outs_r, leaves, cots)
    for k, (a, b) in enumerate(zip(grads_f, grads_r)):
        assert_close(a, b, tol, f"{name} grad of input {k}")
    return outs_f


def check_sinkhorn(device, dtype, lead: tuple, n: int, iters: int, scale: float = 2.0, seed: int = 0):
    from mhc_lm.kernels import fused_sinkhorn

    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(*lead, n, n, generator=gen)).to(device, dtype)
    (p,) = _compare(fused_sinkhorn, sinkhorn_reference, [logits], (iters, 1e-6), TOL[dtype], "sinkhorn", seed)
    assert p.dtype == torch.float32 and (p >= 0).all()
    # the last (for iters = 0 the only) normalisation is over dim -2: each new stream's weights sum to 1
    assert (p.sum(-2) - 1).abs().max().item() < 1e-5
    return p


def check_pre_mix(device, dtype, N: int, n: int, C: int, seed: int = 0, expand_h: bool = False):
    from mhc_lm.kernels import fused_pre_mix

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, n, C, generator=gen).to(device, dtype)
    h = torch.rand(n, generator=gen).expand(N, n) if expand_h else torch.rand(N, n, generator=gen)  # HC static: expanded
    _compare(fused_pre_mix, pre_mix_reference, [x, h.to(device)], (), TOL[dtype], "pre_mix", seed)


def check_post_res(device, dtype, N: int, n: int, C: int, seed: int = 0, f_dtype=None, hc: bool = False):
    from mhc_lm.kernels import fused_post_res

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, n, C, generator=gen).to(device, dtype)
    f = torch.randn(N, C, generator=gen).to(device, f_dtype or dtype)
    if hc:  # HC depth connection: unconstrained A_r (negative entries), B ~ 1
        h_res = torch.eye(n) + 0.5 * torch.randn(N, n, n, generator=gen)
    else:
        h_res = sinkhorn_reference(torch.randn(N, n, n, generator=gen))
    h_post = 2 * torch.rand(N, n, generator=gen)
    tol = max(TOL[dtype], TOL[f_dtype or dtype])
    _compare(fused_post_res, post_res_reference, [x, f, h_res.to(device), h_post.to(device)], (), tol, "post_res", seed)


def check_coefficients(device, dtype, N: int, n: int, C: int, seed: int = 0):
    from mhc_lm.kernels import fused_mhc_coefficients

    gen = torch.Generator().manual_seed(seed)
    K, M = n * C, 2 * n + n * n
    x = (3 * torch.randn(N, K, generator=gen)).to(device, dtype)
    phi = (torch.randn(K, M, generator=gen) / K**0.5).to(device)
    alpha = torch.tensor([0.7, -1.1, 1.5], device=device)
    bias = torch.randn(M, generator=gen).to(device)
    # bf16 x: outputs are fp32 from the same bf16 values, so only the grad of x (bf16) is loose.
    tol = TOL[dtype]
    _compare(fused_mhc_coefficients, mhc_coefficients_reference, [x, phi, alpha, bias], (n, 1e-6), tol, "coefficients", seed)


def run_all(device: str) -> None:
    """Every case at GPU-sized shapes (also the 1B shape: C = 2048, n = 4)."""
    for n, iters in [(2, 20), (3, 7), (4, 20), (4, 0), (8, 10)]:
        check_sinkhorn(device, torch.float32, (3, 1000), n, iters)
    check_sinkhorn(device, torch.bfloat16, (4097,), 4, 20)
    for dtype in (torch.float32, torch.bfloat16):
        for N, n, C in [(4096, 4, 2048), (1000, 3, 1000), (333, 8, 96), (17, 4, 7)]:
            check_pre_mix(device, dtype, N, n, C)
            check_post_res(device, dtype, N, n, C)
            check_post_res(device, dtype, N, n, C, hc=True)
            check_coefficients(device, dtype, N, n, C)
    check_post_res(device, torch.float32, 1024, 4, 2048, f_dtype=torch.bfloat16)
    check_pre_mix(device, torch.bfloat16, 1024, 4, 2048, expand_h=True)
    print("all kernel checks passed on", device)


if __name__ == "__main__":
    run_all(sys.argv[1] if len(sys.argv) > 1 else "cuda")
