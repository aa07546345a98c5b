"""benchmarks/sinkhorn_cpu.py: the rewritten forward forms it times compute the reference Sinkhorn
(it refuses to time a form that differs), and it prints its tables."""

import importlib.util
from pathlib import Path

import pytest
import torch

from mhc_lm.model.sinkhorn import sinkhorn_unrolled

_SPEC = importlib.util.spec_from_file_location(
    "sinkhorn_cpu", Path(__file__).resolve().parents[2] / "benchmarks" / "sinkhorn_cpu.py")
sinkhorn_cpu = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sinkhorn_cpu)


@pytest.mark.parametrize("iters", [1, 2, 20])
@pytest.mark.parametrize("form", [sinkhorn_cpu.scaled_forward, sinkhorn_cpu.gemm_sum_forward,
                                  sinkhorn_cpu.block_matmul_forward, sinkhorn_cpu.reference_forward])
def test_every_timed_form_is_the_projection(form, iters):
    lt = torch.randn(4, 4, 37, generator=torch.Generator().manual_seed(iters)) * 3
    oracle = sinkhorn_unrolled(lt.permute(2, 0, 1), iters).permute(1, 2, 0)  # (n, n, N) layout
    torch.testing.assert_close(form(lt, iters), oracle, rtol=1e-5, atol=1e-6)


def test_reference_backward_is_the_vjp_of_the_unrolled_loop():
    lt = torch.randn(4, 4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.randn(4, 4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaf = lt.clone().requires_grad_()
    sinkhorn_unrolled(leaf.permute(2, 0, 1), 20).permute(1, 2, 0).backward(g)
    torch.testing.assert_close(sinkhorn_cpu.reference_backward(lt, g, 20), leaf.grad)


def test_prints_the_tables(capsys):
    assert sinkhorn_cpu.main(["--tokens", "64", "--reps", "2", "--threads", "1", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "| reference backward (re-run + walk back) |" in out and "| one op | us per call |" in out
    assert out.count("max abs diff") == 3
