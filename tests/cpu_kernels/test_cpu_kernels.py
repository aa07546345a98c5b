"""The numba CPU kernels (mhc_lm/cpu_kernels) equal their torch references: forward and gradients,
fp64 to 1e-12 and fp32 to float rounding, at shapes that are not multiples of the kernels' blocks;
they flush subnormals only below tiny / eps; and no result depends on the thread count."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from mhc_lm.cpu_kernels import (  # noqa: E402
    cpu_post_res,
    cpu_post_res_backward,
    cpu_pre_mix,
    cpu_sinkhorn,
)
from mhc_lm.cpu_kernels.ops import _flush_below  # noqa: E402
from mhc_lm.model.sinkhorn import sinkhorn_unrolled  # noqa: E402
from mhc_lm.model.stream_ops import (  # noqa: E402
    post_res_backward_reference,
    post_res_reference,
    pre_mix_reference,
)

TOL = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-6, rtol=1e-5)}
# sums over C reassociated (vector lanes): fp32 rounding grows with the terms, ~sqrt(C) eps |terms|
SUM_TOL = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-4)}


def sinkhorn_pair(logits, iters, grad):
    out = []
    for fn in (cpu_sinkhorn, sinkhorn_unrolled):
        x = logits.clone().requires_grad_()
        y = fn(x, iters, 1e-6)
        (dx,) = torch.autograd.grad(y, x, grad)
        out.append((y.detach(), dx))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("iters", [0, 1, 20])
@pytest.mark.parametrize("N, n", [(1, 4), (63, 4), (130, 4), (65, 3), (40, 8), (9, 16), (7, 2)])
def test_sinkhorn_equals_the_unrolled_loop(dtype, iters, N, n):
    g = torch.Generator().manual_seed(N * n + iters)
    logits = (torch.randn(N, n, n, generator=g) * 3).to(dtype)
    grad = torch.randn(N, n, n, generator=g).to(dtype)
    (y, dx), (y_ref, dx_ref) = sinkhorn_pair(logits, iters, grad)
    assert y.dtype == dtype and dx.dtype == dtype
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(dx, dx_ref, **TOL[dtype])


def test_sinkhorn_batch_axes_and_saturated_logits():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64) * 40  # exp underflows: rows of one-hots
    grad = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64)
    (y, dx), (y_ref, dx_ref) = sinkhorn_pair(logits, 20, grad)
    assert y.shape == (2, 5, 4, 4)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(dx, dx_ref, **TOL[torch.float64])


def test_sinkhorn_gradcheck():
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    for iters in (0, 1, 7):
        assert torch.autograd.gradcheck(lambda t: cpu_sinkhorn(t, iters, 1e-6), (x,))


def test_sinkhorn_backward_flushes_only_subnormal_sized_values():
    """Near a fixed point the walked-back gradient shrinks to subnormals (which cost ~100x on x86):
    the kernel writes 0 below tiny / eps and keeps everything above."""
    torch.manual_seed(0)
    logits = (torch.randn(256, 4, 4) * 0.02).requires_grad_()  # near-uniform: the model's case at init
    grad = torch.randn(256, 4, 4) * 1e-30
    (dx,) = torch.autograd.grad(cpu_sinkhorn(logits, 20, 1e-6), logits, grad)
    tiny = torch.finfo(torch.float32).tiny
    assert not ((dx != 0) & (dx.abs() < tiny)).any()  # no subnormal left
    assert _flush_below(torch.float32) < 1e-30 < 1e-7 * torch.finfo(torch.float32).eps  # far below a gradient's rounding
    big = torch.randn(256, 4, 4)
    (dx_big,) = torch.autograd.grad(cpu_sinkhorn(logits, 20, 1e-6), logits, big)
    (ref,) = torch.autograd.grad(sinkhorn_unrolled(logits, 20, 1e-6), logits, big)
    torch.testing.assert_close(dx_big, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N, n, C", [(37, 4, 48), (5, 8, 33), (1, 2, 1), (64, 3, 300)])
def test_pre_mix_equals_the_reference(dtype, N, n, C):
    g = torch.Generator().manual_seed(N + C)
    x, h = torch.randn(N, n, C, generator=g, dtype=dtype), torch.rand(N, n, generator=g, dtype=dtype)
    grad = torch.randn(N, C, generator=g, dtype=dtype)
    res = []
    for fn in (cpu_pre_mix, pre_mix_reference):
        xx, hh = x.clone().requires_grad_(), h.clone().requires_grad_()
        y = fn(xx, hh)
        res.append((y.detach(), *torch.autograd.grad(y, (xx, hh), grad)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, **SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N, n, C", [(37, 4, 48), (5, 8, 33), (1, 2, 1), (64, 3, 300)])
def test_post_res_equals_the_reference(dtype, N, n, C):
    """fp32 inside for either input dtype, as the reference; the outputs keep the inputs' dtypes."""
    g = torch.Generator().manual_seed(N * C)
    x, f = torch.randn(N, n, C, generator=g, dtype=dtype), torch.randn(N, C, generator=g, dtype=dtype)
    h_res = torch.randn(N, n, n, generator=g, dtype=dtype).transpose(1, 2)  # strided, as views from the model
    h_post = torch.rand(N, n, generator=g, dtype=dtype)
    grad = torch.randn(N, n, C, generator=g, dtype=dtype)
    out, ref = cpu_post_res(x, f, h_res, h_post), post_res_reference(x, f, h_res, h_post)
    assert out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out, ref, **SUM_TOL[torch.float32])
    for a, b in zip(cpu_post_res_backward(x, f, h_res, h_post, grad),
                    post_res_backward_reference(x, f, h_res, h_post, grad), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, **SUM_TOL[torch.float32])


def test_post_res_takes_bf16_f_and_an_expanded_gradient():
    """F's output under autocast is bf16 (its gradient comes back in bf16); the last layer's gradient
    is the streams' mean's backward, an expanded (stride 0) tensor."""
    g = torch.Generator().manual_seed(1)
    x, f = torch.randn(9, 4, 16, generator=g), torch.randn(9, 16, generator=g).bfloat16()
    h_res, h_post = torch.rand(9, 4, 4, generator=g), torch.rand(9, 4, generator=g)
    grad = torch.randn(9, 1, 16, generator=g).expand(9, 4, 16)
    ours, ref = cpu_post_res_backward(x, f, h_res, h_post, grad), post_res_backward_reference(x, f, h_res, h_post, grad)
    assert ours[1].dtype == torch.bfloat16
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(cpu_post_res(x, f, h_res, h_post), post_res_reference(x, f, h_res, h_post))


def test_results_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(300, 4, 4, generator=g, requires_grad=True)
    x, f = torch.randn(300, 4, 64, generator=g), torch.randn(300, 64, generator=g)
    h_res, h_post, grad = torch.rand(300, 4, 4, generator=g), torch.rand(300, 4, generator=g), torch.randn(300, 4, 64, generator=g)

    def run():
        (dl,) = torch.autograd.grad(cpu_sinkhorn(logits, 20, 1e-6), logits, grad[:, :, :4].contiguous())
        return (dl, cpu_post_res(x, f, h_res, h_post), *cpu_post_res_backward(x, f, h_res, h_post, grad))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("N, n, C", [(37, 4, 48), (5, 8, 33), (1, 2, 1), (64, 3, 300)])
def test_hc_mix_in_equals_the_reference(N, n, C):
    """HC's dynamic coefficients + pre-mix: the layer input, A_r, B and the gradients of the stream
    and of all seven parameters, away from the init (every term carries signal)."""
    from mhc_lm.cpu_kernels import cpu_hc_mix_in
    from mhc_lm.model.stream_ops import hc_mix_in_reference

    g = torch.Generator().manual_seed(N + n + C)
    x = torch.randn(N, n, C, generator=g)
    params = [torch.randn(n, generator=g), torch.randn(n, n, generator=g), torch.randn(n, generator=g),
              1 + 0.1 * torch.randn(C, generator=g), 0.3 * torch.randn(C, n + 2, generator=g),
              torch.full((1,), 0.7), torch.full((1,), -0.4)]
    grads = [torch.randn(N, C, generator=g), torch.randn(N, n, n, generator=g), torch.randn(N, n, generator=g)]
    res = []
    for fn in (cpu_hc_mix_in, hc_mix_in_reference):
        leaves = [t.clone().requires_grad_() for t in (x, *params)]
        outs = fn(*leaves, eps=1e-6)
        res.append([o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, grads)))
    for a, b in zip(*res, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, atol=5e-5 * max(1.0, b.abs().max().item()), rtol=1e-4)


def test_running_a_kernel_leaves_torchs_thread_count_alone():
    """numba's OpenMP pool, launched by the first kernel of a process, set the OpenMP thread count
    torch shares: a 1-thread run became 2-thread. Checked in a fresh process (the pool is per process)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "from mhc_lm.cpu_kernels import cpu_pre_mix, cpu_sinkhorn\n"
            "cpu_sinkhorn(torch.randn(8, 4, 4), 20, 1e-6); cpu_pre_mix(torch.randn(8, 4, 16), torch.rand(8, 4))\n"
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[-1] == "1"
