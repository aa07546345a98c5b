"""Every H_res map through the fused pre-mix and post + residual kernels (Triton interpreter).

The kernels take any (N, n, n) H_res: doubly stochastic ones and the orthogonal map's, whose entries
are negative. Compared with the references forward and backward, (1) kernel by kernel, with the
gradient carried on to the map's logits, and (2) in a model whose mixing dispatches to the kernels."""

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

import mhc_lm.model.residual_mhc as residual_mhc  # noqa: E402
import mhc_lm.model.stream_connection as stream_connection  # noqa: E402
from mhc_lm.kernels import fused_post_res, fused_post_res_backward, fused_pre_mix  # noqa: E402
from mhc_lm.model import MhcLmForCausalLM  # noqa: E402
from mhc_lm.model.h_res_maps import H_RES_MAPS  # noqa: E402
from mhc_lm.model.stream_ops import post_res, post_res_backward_reference, post_res_reference  # noqa: E402
from tests.model.helpers import perturbed, tiny_config  # noqa: E402

from .cases import TOL, assert_close  # noqa: E402

CASES = [("sinkhorn", 4), ("sinkhorn", 8), ("permutation", 4), ("kronecker", 4), ("kronecker", 8),
         ("orthostochastic", 4), ("orthostochastic", 8), ("orthogonal", 4), ("orthogonal", 8)]


@pytest.mark.parametrize("h_res_map, n", CASES, ids=[f"{m}-n{n}" for m, n in CASES])
def test_post_res_kernel_takes_every_map(h_res_map, n):
    gen = torch.Generator().manual_seed(n)
    N, C = 23, 40
    m = H_RES_MAPS[h_res_map]
    logits0 = 2 * torch.randn(N, m.num_outputs(n), generator=gen)
    x0, f0 = torch.randn(N, n, C, generator=gen), torch.randn(N, C, generator=gen)
    h_post0 = 2 * torch.rand(N, n, generator=gen)
    cot = torch.randn(N, n, C, generator=gen)
    results = []
    for fwd, bwd in ((fused_post_res, fused_post_res_backward), (post_res_reference, post_res_backward_reference)):
        logits, x, f, h_post = (t.clone().requires_grad_() for t in (logits0, x0, f0, h_post0))
        h_res = m(logits, n)
        out = post_res(x, f, h_res, h_post, fwd, bwd)
        grads = torch.autograd.grad(out, (logits, x, f, h_post), cot)
        results.append((h_res.detach(), out.detach(), *grads))
    (h_res, *fused), (_, *ref) = results
    if h_res_map == "orthogonal":
        assert (h_res < -0.05).any()  # negative entries really go through the kernel
    for what, a, b in zip(("out", "d logits", "dx", "df", "dh_post"), fused, ref):
        assert_close(a, b, TOL[torch.float32], f"{h_res_map} n={n} {what}")
    # and the kernel alone against the autograd reference
    assert_close(fused_post_res(x0, f0, h_res, h_post0), post_res_reference(x0, f0, h_res, h_post0),
                 TOL[torch.float32], "forward")


def _fused_dispatch(real, calls):
    kernels = {"pre_mix": fused_pre_mix, "post_res": fused_post_res, "post_res_backward": fused_post_res_backward}

    def counted(name):
        def kernel(*args):
            calls.append(name)
            return kernels[name](*args)
        return kernel

    def dispatch(name, fused, device, n_streams=None, **kw):  # the CUDA choice, made on CPU (interpreter)
        return counted(name) if fused and name in kernels else real(name, fused, device, n_streams, **kw)
    return dispatch


def _loss_and_grads(h_res_map, fused, recompute="none"):
    torch.manual_seed(0)
    # without the CPU kernels: their mHC mix-in is one op, the Triton path composes the ops under test
    model = MhcLmForCausalLM(tiny_config("mhc", h_res_map=h_res_map, num_hidden_layers=1, fused_kernels=fused,
                                         mixing_recompute=recompute, sinkhorn_iters=5, cpu_kernels=False))
    perturbed(model, scale=0.2, seed=3)  # off the init: orthogonal's H_res is I there
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(1))
    out = model(ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("h_res_map", list(H_RES_MAPS))
def test_model_with_fused_mixing_equals_reference(h_res_map, monkeypatch):
    logits_ref, grads_ref = _loss_and_grads(h_res_map, False)
    calls = []
    for module in (residual_mhc, stream_connection):  # mix-in in the mode, post + residual shared
        monkeypatch.setattr(module, "dispatch", _fused_dispatch(module.dispatch, calls))
    for recompute in ("none", "block"):
        calls.clear()
        logits, grads = _loss_and_grads(h_res_map, True, recompute)
        assert {"pre_mix", "post_res", "post_res_backward"} <= set(calls), calls
        assert_close(logits, logits_ref, TOL[torch.float32], f"{h_res_map} {recompute} logits")
        for name, g in grads_ref.items():
            assert_close(grads[name], g, TOL[torch.float32], f"{h_res_map} {recompute} grad {name}")
