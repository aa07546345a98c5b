"""The whole-mix-in CPU ops: mHC's (sinkhorn map) equals its torch reference, and both hand post +
residual a view of the stream whose gradient they add into x's with the bits of autograd's sum."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from mhc_lm.cpu_kernels import cpu_hc_mix_in, cpu_mhc_mix_in  # noqa: E402
from mhc_lm.model.stream_ops import mhc_mix_in_reference  # noqa: E402


def mhc_inputs(N, n, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = 2 * n + n * n
    x = torch.randn(N, n, C, generator=g)
    # off the init: gates and projection large enough that every coefficient carries signal
    params = [0.3 * torch.randn(n * C, K, generator=g), torch.tensor([0.6, -0.8, 1.1]), torch.randn(K, generator=g)]
    grads = [torch.randn(N, C, generator=g), torch.randn(N, n, n, generator=g), torch.randn(N, n, generator=g)]
    return x, params, grads


def hc_inputs(N, n, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, n, C, generator=g)
    params = [torch.randn(n, generator=g), torch.randn(n, n, generator=g), torch.randn(n, generator=g),
              1 + 0.1 * torch.randn(C, generator=g), 0.3 * torch.randn(C, n + 2, generator=g),
              torch.full((1,), 0.7), torch.full((1,), -0.4)]
    grads = [torch.randn(N, C, generator=g), torch.randn(N, n, n, generator=g), torch.randn(N, n, generator=g)]
    return x, params, grads


def outputs_and_grads(fn, x, params, grads, **kw):
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    outs = fn(*leaves, **kw)
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, grads))


@pytest.mark.parametrize("N, n, C, iters", [(37, 4, 48, 20), (150, 4, 40, 20), (5, 8, 33, 3), (1, 2, 1, 1),
                                            (70, 3, 20, 0)])
def test_mhc_mix_in_equals_the_reference(N, n, C, iters):
    """Layer input, H_res, H_post and the gradients of x, phi, the gates and the biases; shapes that
    are not multiples of the Sinkhorn kernel's token block, and sinkhorn_iters = 0."""
    x, params, grads = mhc_inputs(N, n, C, seed=N + n + C)
    ours = outputs_and_grads(cpu_mhc_mix_in, x, params, grads, sinkhorn_iters=iters)
    ref = outputs_and_grads(mhc_mix_in_reference, x, params, grads, sinkhorn_iters=iters)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, atol=5e-5 * max(1.0, b.abs().max().item()), rtol=1e-4)
    h_res = ours[1]
    # each new stream j is a convex combination of the old ones: the last normalisation is over i
    torch.testing.assert_close(h_res.sum(-2), torch.ones(N, n), atol=1e-5, rtol=0)


@pytest.mark.parametrize("op, inputs", [(cpu_hc_mix_in, hc_inputs), (cpu_mhc_mix_in, mhc_inputs)])
def test_stream_grad_adds_post_res_gradient_with_autograds_bits(op, inputs):
    """With stream_grad the fourth output views x, and x's gradient equals, bit for bit, what autograd
    makes of the op without it plus the same gradient arriving from a second consumer of x."""
    x, params, grads = inputs(150, 4, 40)
    g_other = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    *outs, through = op(*leaves, stream_grad=True)
    assert through.data_ptr() == leaves[0].data_ptr() and through.shape == x.shape
    fused = torch.autograd.grad([*outs, through], leaves, [*grads, g_other])
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    outs = op(*leaves)
    separate = torch.autograd.grad([*outs, leaves[0]], leaves, [*grads, g_other])  # autograd sums x's two grads
    assert all(torch.equal(a, b) for a, b in zip(fused, separate))


@pytest.mark.parametrize("op, inputs", [(cpu_hc_mix_in, hc_inputs), (cpu_mhc_mix_in, mhc_inputs)])
def test_stream_grad_is_none_without_a_float32_stream_or_a_graph(op, inputs):
    x, params, _ = inputs(9, 4, 8)
    assert op(x.double(), *[p.double() for p in params], stream_grad=True)[3] is None
    with torch.no_grad():
        assert op(x, *params, stream_grad=True)[3] is None
    assert len(op(x, *params)) == 3

