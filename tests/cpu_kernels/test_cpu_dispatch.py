"""The model runs the numba kernels on CPU when `model.cpu_kernels` (default) and numba imports, the
torch references otherwise, and the two give the same model to float rounding."""

from __future__ import annotations

import sys

import pytest
import torch

from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
from mhc_lm.model.fused_ops import FUSED_OPS, dispatch

numba = pytest.importorskip("numba")


def model(mode, **overrides):
    torch.manual_seed(0)
    cfg = MhcLmConfig(residual_mode=mode, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      vocab_size=256, num_attention_heads=4, n_streams=4, **overrides)
    return MhcLmForCausalLM(cfg)


def loss_and_grads(m, ids):
    out = m(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {k: p.grad for k, p in m.named_parameters() if p.grad is not None}


def test_dispatch_picks_the_cpu_kernel_only_when_asked_and_on_cpu():
    import mhc_lm.cpu_kernels as ck

    cpu = torch.device("cpu")
    for name, op in FUSED_OPS.items():
        picked = dispatch(name, False, cpu, 4, cpu_kernels=True)
        assert picked is (getattr(ck, op.cpu_kernel) if op.cpu_kernel else op.reference), name
        assert dispatch(name, False, cpu, 4, cpu_kernels=False) is op.reference
        assert dispatch(name, False, torch.device("meta"), 4, cpu_kernels=True) is op.reference


def test_without_numba_the_references_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "mhc_lm.cpu_kernels", None)  # import raises ImportError
    for name, op in FUSED_OPS.items():
        assert dispatch(name, False, torch.device("cpu"), 4, cpu_kernels=True) is op.reference
    ids = torch.randint(3, 256, (2, 16))
    assert torch.isfinite(model("mhc")(input_ids=ids).logits).all()


@pytest.mark.parametrize("mode, extra", [("hc", {}), ("mhc", {}), ("mhc", {"mixing_recompute": "block"}),
                                         ("mhc", {"mixing_recompute": "sublayer"}), ("mhc", {"sinkhorn_iters": 1}),
                                         ("mhc", {"sinkhorn_iters": 0}), ("mhc", {"h_res_map": "kronecker"}),
                                         ("hc", {"mixing_recompute": "sublayer"}), ("hc", {"hc_dynamic": False})])
def test_cpu_kernels_and_references_give_the_same_model(mode, extra):
    ids = torch.randint(3, 256, (2, 33))
    logits, grads = loss_and_grads(model(mode, cpu_kernels=True, **extra), ids)
    ref_logits, ref_grads = loss_and_grads(model(mode, cpu_kernels=False, **extra), ids)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for k in grads:  # mixing gradients are sums with cancellation: compare at the gradients' own scale
        torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5 * scale, rtol=1e-4, msg=k)


def test_the_kernels_actually_run_in_the_model(monkeypatch):
    import mhc_lm.cpu_kernels.mhc_ops as mhc_ops
    import mhc_lm.cpu_kernels.ops as ops

    calls = []

    def spy(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _n=name: (calls.append(_n), _real(*a))[1])

    for name in ("pre_mix_forward", "post_res_forward", "post_res_backward", "pre_mix_backward"):
        spy(ops._sm, name)
    for name in ("coefficients_forward", "coefficients_backward", "stream_backward"):
        spy(mhc_ops._mm, name)
    spy(ops._sk, "sinkhorn_backward")  # the sinkhorn module object is shared by ops and mhc_ops
    ids = torch.randint(3, 256, (2, 16))
    loss_and_grads(model("mhc"), ids)  # the sinkhorn map: mHC's fused mix-in, then post + residual
    assert set(calls) == {"coefficients_forward", "coefficients_backward", "stream_backward", "sinkhorn_backward",
                          "post_res_forward", "post_res_backward"}
    calls.clear()
    loss_and_grads(model("mhc", h_res_map="kronecker"), ids)  # another map: reference coefficients, pre-mix kernels
    assert set(calls) == {"pre_mix_forward", "pre_mix_backward", "post_res_forward", "post_res_backward"}
    calls.clear()
    loss_and_grads(model("mhc", cpu_kernels=False), ids)
    assert not calls


def test_hc_runs_its_fused_mix_in(monkeypatch):
    import mhc_lm.cpu_kernels.hc_ops as ops

    calls = []
    for name in ("hc_mix_in_forward", "hc_mix_in_backward"):
        real = getattr(ops._hc, name)
        monkeypatch.setattr(ops._hc, name, lambda *a, _real=real, _n=name: (calls.append(_n), _real(*a))[1])
    ids = torch.randint(3, 256, (2, 16))
    loss_and_grads(model("hc"), ids)
    assert calls.count("hc_mix_in_forward") == 4 and calls.count("hc_mix_in_backward") == 4  # 2 layers x 2 sub-layers
    calls.clear()
    loss_and_grads(model("hc", hc_dynamic=False), ids)  # the static form has no projection: coefficients + pre-mix
    assert not calls
