import torch
import pytest

from mhc_lm.model import sinkhorn


def test_normalised_last_axis_exact_other_close():
    torch.manual_seed(0)
    logits = torch.randn(4096, 4, 4)
    p = sinkhorn(logits, iters=20)
    assert p.dtype == torch.float32
    col = p.sum(dim=-2)  # normalised last: sum over the old-stream axis i for each new stream j
    row = p.sum(dim=-1)
    assert (col - 1).abs().max() < 2e-6  # 1 up to fp32 rounding and the 1e-6 eps of the reference kernels
    assert (row - 1).abs().max() < 1e-2
    assert (row - 1).abs().median() < 1e-5
    assert (p >= 0).all()


@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_extreme_logits_finite_and_nonnegative(scale):
    torch.manual_seed(1)
    logits = torch.randn(64, 4, 4) * scale
    for p in (sinkhorn(logits), sinkhorn(logits.bfloat16())):
        assert torch.isfinite(p).all() and (p >= 0).all()
        assert (p.sum(-2) - 1).abs().max() < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = sinkhorn(logits)
    assert p.dtype == torch.float32 and torch.isfinite(p).all() and (p >= 0).all()


def test_gradcheck_float64():
    torch.manual_seed(2)
    logits = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, iters=5), (logits,))


def test_converges_to_unique_scaling():
    """Sinkhorn's theorem: D1 exp(L) D2 is the unique doubly stochastic scaling of exp(L)."""
    torch.manual_seed(3)
    logits = torch.randn(8, 5, 5, dtype=torch.float64)
    p = sinkhorn(logits, iters=2000, eps=0.0)
    assert torch.allclose(p.sum(-1), torch.ones(8, 5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(p.sum(-2), torch.ones(8, 5, dtype=torch.float64), atol=1e-10)
    # it is a diagonal scaling of exp(L): log p - L = a_i + b_j (rank-one additive structure)
    r = torch.log(p) - logits
    centred = r - r.mean(-1, keepdim=True) - r.mean(-2, keepdim=True) + r.mean((-1, -2), keepdim=True)
    assert centred.abs().max() < 1e-8
    # unique: a different starting shift of the logits (a diagonal scaling itself) gives the same matrix
    shifted = logits + torch.randn(8, 5, 1, dtype=torch.float64) + torch.randn(8, 1, 5, dtype=torch.float64)
    assert torch.allclose(sinkhorn(shifted, iters=2000, eps=0.0), p, atol=1e-9)


def test_zero_iters_is_valid_not_raw_logits():
    logits = torch.randn(10, 3, 3)
    p = sinkhorn(logits, iters=0)
    # the axis normalised is the one every iters ends on (dim -2: the weights of each new stream)
    assert (p >= 0).all() and torch.allclose(p.sum(-2), torch.ones(10, 3), atol=1e-6)
    skewed = torch.zeros(3, 3)
    skewed[:, 1] = 5.0  # every old stream prefers new stream 1: still no column may exceed 1
    assert torch.allclose(sinkhorn(skewed, iters=0).sum(-2), torch.ones(3), atol=1e-6)


def test_orientation_hand_example_3x3():
    """exp(L) = [[1, 2, 1], [1, 1, 2], [2, 1, 1]] is already a scaled doubly stochastic matrix (sums 4)."""
    base = torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0], [2.0, 1.0, 1.0]], dtype=torch.float64)
    p = sinkhorn(base.log(), iters=30, eps=0.0)
    assert torch.allclose(p, base / 4, atol=1e-12)
    # a column scaling of exp(L) does not change the result, the fixed point is unique
    skew = base * torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    assert torch.allclose(sinkhorn(skew.log(), iters=200, eps=0.0), base / 4, atol=1e-10)


# ---- the one-node reference (`sinkhorn_reference`) against the unrolled loop (the oracle) ----
from mhc_lm.model.sinkhorn import sinkhorn_reference, sinkhorn_unrolled  # noqa: E402


@pytest.mark.parametrize("iters", [0, 1, 20])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_one_node_equals_unrolled_forward_and_backward(iters, scale):
    torch.manual_seed(4)
    logits = (torch.randn(37, 4, 4, dtype=torch.float64) * scale).requires_grad_()
    grad = torch.randn(37, 4, 4, dtype=torch.float64)
    p, p_oracle = sinkhorn_reference(logits, iters), sinkhorn_unrolled(logits, iters)
    torch.testing.assert_close(p, p_oracle, atol=1e-12, rtol=0)
    (g,), (g_oracle,) = torch.autograd.grad(p, logits, grad), torch.autograd.grad(p_oracle, logits, grad)
    torch.testing.assert_close(g, g_oracle, atol=1e-12, rtol=0)
    x32 = logits.detach().float().requires_grad_()  # fp32, what the model runs: within 1e-6
    p32, p32_oracle = sinkhorn_reference(x32, iters), sinkhorn_unrolled(x32, iters)
    assert (p32 - p32_oracle).abs().max() <= 1e-6
    (g32,), (g32_oracle,) = torch.autograd.grad(p32, x32, grad.float()), torch.autograd.grad(p32_oracle, x32, grad.float())
    assert (g32 - g32_oracle).abs().max() <= 1e-6


@pytest.mark.parametrize("iters", [0, 1, 20])
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_one_node_gradcheck_float64(iters, scale):
    torch.manual_seed(5)
    logits = (torch.randn(3, 4, 4, dtype=torch.float64) * scale).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sinkhorn_reference(x, iters), (logits,))


def test_one_node_is_one_autograd_node_saving_only_the_logits():
    logits = torch.randn(16, 4, 4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        p = sinkhorn_reference(logits, 20)
    assert type(p.grad_fn).__name__ == "_SinkhornBackward"
    assert saved == [16 * 4 * 4]  # the logits (tokens-last copy) and nothing of the 20 iterations
    assert p.grad_fn.next_functions[0][0] is not None  # connected to the logits' graph
    with torch.no_grad():
        assert sinkhorn_reference(logits, 20).grad_fn is None
    under_autocast_and_bf16 = sinkhorn_reference(logits.bfloat16(), 3)
    assert under_autocast_and_bf16.dtype == torch.float32
