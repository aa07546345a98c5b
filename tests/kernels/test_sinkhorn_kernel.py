"""Fused Sinkhorn-Knopp vs `sinkhorn_reference`, forward and (recomputing) backward."""

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from mhc_lm.kernels import fused_sinkhorn  # noqa: E402
from mhc_lm.model.sinkhorn import sinkhorn_reference  # noqa: E402

from .cases import check_sinkhorn  # noqa: E402


@pytest.mark.parametrize(
    "lead, n, iters",
    [((37,), 4, 20), ((2, 19), 3, 5), ((50,), 4, 0), ((13,), 8, 3), ((7,), 2, 1), ((300,), 4, 2), ((1,), 5, 20)],
)
def test_fp32_matches_reference(lead, n, iters):
    check_sinkhorn("cpu", torch.float32, lead, n, iters, seed=n * 100 + iters)


def test_bf16_logits_loose():
    check_sinkhorn("cpu", torch.bfloat16, (45,), 4, 20, seed=3)


def test_saturated_logits_stay_finite_and_match():
    # large logits (softmax near one-hot, sums near eps): the recomputed backward still agrees
    check_sinkhorn("cpu", torch.float32, (23,), 4, 20, scale=30.0, seed=5)


def test_changing_logits_changes_output_and_known_uniform_answer():
    zeros = torch.zeros(3, 4, 4)
    p = fused_sinkhorn(zeros, 20, 1e-6)
    torch.testing.assert_close(p, torch.full_like(p, 0.25), atol=1e-6, rtol=0)  # uniform logits -> 1/n
    q = fused_sinkhorn(zeros + 3 * torch.eye(4), 20, 1e-6)
    assert (q.diagonal(dim1=-2, dim2=-1) > 0.5).all()


def test_float64_goes_to_the_reference_in_float64():
    """The kernel computes in float32 and refuses float64; the dispatch sends float64 to the reference."""
    from mhc_lm.model.fused_ops import dispatch

    logits = torch.randn(5, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        fused_sinkhorn(logits, 4, 1e-6)
    cuda = torch.device("cuda")  # nothing is allocated: the choice is made from the arguments
    assert dispatch("sinkhorn", True, cuda, 3, torch.float64) is sinkhorn_reference
    p = dispatch("sinkhorn", True, logits.device, 3, logits.dtype)(logits, 4, 1e-6)
    assert p.dtype == torch.float64


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="sinkhorn_iters"):
        fused_sinkhorn(torch.zeros(2, 4, 4), -1)
    with pytest.raises(ValueError, match=r"\(\.\.\., n, n\)"):
        fused_sinkhorn(torch.zeros(2, 4, 3), 3)
