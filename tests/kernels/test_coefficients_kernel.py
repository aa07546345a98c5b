"""Fused mHC coefficient projection (RMSNorm + phi + gates/bias + activations) vs the reference."""

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from mhc_lm.kernels import fused_mhc_coefficients  # noqa: E402
from mhc_lm.model.stream_ops import mhc_coefficients_reference  # noqa: E402

from .cases import check_coefficients  # noqa: E402


@pytest.mark.parametrize("N, n, C", [(37, 4, 48), (130, 3, 100), (7, 2, 33), (20, 8, 12), (200, 4, 16)])
def test_fp32_matches_reference(N, n, C):
    check_coefficients("cpu", torch.float32, N, n, C, seed=N)


def test_bf16_stream_loose():
    check_coefficients("cpu", torch.bfloat16, 50, 4, 30, seed=9)


def test_only_some_outputs_used():
    # gradients flow when H_pre / H_post are unused (None cotangents inside the backward)
    N, n, C = 9, 4, 8
    x = torch.randn(N, n * C, requires_grad=True)
    phi = (0.1 * torch.randn(n * C, 2 * n + n * n)).requires_grad_()
    alpha, bias = torch.tensor([0.3, 0.2, 0.9], requires_grad=True), torch.randn(2 * n + n * n, requires_grad=True)
    got = torch.autograd.grad(fused_mhc_coefficients(x, phi, alpha, bias, n)[2].sum(), (x, phi, alpha, bias))
    want = torch.autograd.grad(mhc_coefficients_reference(x, phi, alpha, bias, n)[2].sum(), (x, phi, alpha, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert got[3][: 2 * n].abs().max() == 0  # b_pre, b_post get no gradient from the logits alone


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"phi \(K, 24\)"):
        fused_mhc_coefficients(torch.zeros(3, 16), torch.zeros(16, 20), torch.zeros(3), torch.zeros(24), 4)


@pytest.mark.parametrize("n", [4, 8])
def test_cuda_plan_shapes_in_the_interpreter(monkeypatch, n):
    # the CUDA plan's tiles (narrower than K, several dphi splits over tokens) give the reference
    # results; the dot precision stays "ieee" here (the interpreter computes dots in fp32 anyway)
    import mhc_lm.kernels.coefficients as co
    import mhc_lm.kernels.launch as launch

    monkeypatch.setattr(launch, "sm_count", lambda index: 8)
    monkeypatch.setattr(launch, "INTERPRETED", False)
    cuda = co.plan(200, n * 40, 2 * n + n * n, torch.device("cuda", 0))
    monkeypatch.setattr(launch, "INTERPRETED", True)
    assert cuda.dphi.splits > 1 and cuda.main.BC < n * 40
    monkeypatch.setattr(co, "plan", lambda T, K, M, device: co.CoefPlan(cuda.main, cuda.dphi, "ieee"))
    check_coefficients("cpu", torch.float32, 200, n, 40, seed=3)
