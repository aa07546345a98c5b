"""The RMS-normalised projection of the hc / mhc coefficients (`norm_projection`): one autograd node
whose explicit backward equals autograd through the plain formula, in float64 (gradcheck) and in the
float32 / bf16 settings the model runs it in."""

import pytest
import torch

from mhc_lm.model.norm_projection import norm_projection


def plain(x, w, eps):
    """RMSNorm without weight, then the projection: what `norm_projection` computes."""
    x = x.double() if x.dtype == torch.float64 else x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) @ w.to(x.dtype)


@pytest.mark.parametrize("tokens_last", [False, True])
def test_gradcheck_float64(tokens_last):
    torch.manual_seed(0)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: norm_projection(a, b, 1e-6, tokens_last), (x, w))


@pytest.mark.parametrize("tokens_last", [False, True])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_equals_the_plain_formula_forward_and_backward(tokens_last, scale):
    torch.manual_seed(1)
    x = (torch.randn(64, 96) * scale).requires_grad_()
    w = (torch.randn(96, 24) * 0.02).requires_grad_()
    g = torch.randn(64, 24)
    z = norm_projection(x, w, 1e-6, tokens_last)
    (z.t() if tokens_last else z).backward(g)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = plain(x2, w2, 1e-6)
    ref.backward(g)
    assert z.shape == ((24, 64) if tokens_last else (64, 24))
    torch.testing.assert_close(z.t() if tokens_last else z, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-6 / scale)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-5)


def test_bf16_input_gets_a_bf16_gradient_computed_in_fp32_under_autocast():
    torch.manual_seed(2)
    x32 = torch.randn(32, 64)
    x = x32.bfloat16().requires_grad_()
    w = torch.randn(64, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = norm_projection(x, w, 1e-6)
    assert z.dtype == torch.float32  # autocast is off inside: the coefficients stay fp32
    z.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    xr = x.detach().float().requires_grad_()
    plain(xr, w.detach(), 1e-6).sum().backward()
    torch.testing.assert_close(x.grad.float(), xr.grad, rtol=1e-2, atol=1e-3)


def test_only_the_needed_gradients_are_computed():
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(16, 3)  # a frozen weight
    norm_projection(x, w, 1e-6).sum().backward()
    assert x.grad is not None and w.grad is None
