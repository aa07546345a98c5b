"""model.h_res_map wired into the mHC module: shapes, init, Pre-Norm equivalence, more
streams, fused-kernel fallback, mixing recompute and generation with the KV cache, for every map."""

import pytest
import torch

import mhc_lm.model.residual_mhc as residual_mhc
from mhc_lm.model import MhcLmForCausalLM
from mhc_lm.model.h_res_maps import H_RES_MAPS
from mhc_lm.model.fused_ops import sinkhorn
from mhc_lm.model.stream_ops import mhc_coefficients_reference

from .helpers import loss_and_grads, perturbed, tiny_config

MAPS = list(H_RES_MAPS)
DS_MAPS = [m for m in MAPS if H_RES_MAPS[m].doubly_stochastic]


def build(mode, seed=0, **overrides):
    torch.manual_seed(seed)
    return MhcLmForCausalLM(tiny_config(mode, **overrides)).eval()


@pytest.mark.parametrize("h_res_map", MAPS)
def test_projection_width_and_bias_follow_the_map(h_res_map):
    model = build("mhc", h_res_map=h_res_map)
    n, C, K = 4, 32, H_RES_MAPS[h_res_map].num_outputs(4)
    for m in model.model.mixing_modules():
        assert m.phi.shape == (n * C, 2 * n + K) and m.bias.shape == (2 * n + K,)
        torch.testing.assert_close(m.bias.data[2 * n:], H_RES_MAPS[h_res_map].init_bias(n), atol=0, rtol=0)
        phi_res = m.phi.data[:, 2 * n:]
        # orthogonal starts at S = 0 exactly; every other map keeps the usual random draw (orthostochastic:
        # S = 0 is a stationary point there)
        assert (phi_res.abs().max() == 0) == H_RES_MAPS[h_res_map].zero_projection_init


def test_default_sinkhorn_is_the_old_computation():
    """The default map is today's: phi (nC, 2n + n^2), identity bias 6I - 3 with b_pre +-3 on the home
    stream, and H_res = sinkhorn(the (N, n, n) logits of the reference projection), bit for bit (the
    torch references: the CPU kernels equal them to rounding, tests/model/test_cpu_kernels.py)."""
    model = perturbed(build("mhc", mhc_init="identity", cpu_kernels=False))
    n = 4
    for k, m in enumerate(model.model.mixing_modules()):
        b_pre = torch.full((n,), -3.0)
        b_pre[k % n] = 3.0
        assert torch.equal(m.init_bias(), torch.cat([b_pre, torch.zeros(n), (6 * torch.eye(n) - 3).flatten()]))
    m = model.model.mixing_modules()[0]
    xs = torch.randn(7, n, 32)
    h_pre, h_post, h_res = m.coefficients(xs)
    ref_pre, ref_post, logits = mhc_coefficients_reference(xs.reshape(7, -1), m.phi, m.alpha, m.bias, n, m.eps)
    assert logits.shape == (7, n, n)
    assert torch.equal(h_res, sinkhorn(logits, m.sinkhorn_iters))
    assert torch.equal(h_pre, ref_pre) and torch.equal(h_post, ref_post)


@pytest.mark.parametrize("h_res_map", MAPS)
def test_init_is_prenorm_for_every_map(h_res_map):
    """Identical streams stay identical at init: with the H_pre / H_post gates at 0 (as the sinkhorn
    test in test_modes.py) and the H_res gate and phi_res as initialised, logits equal standard's."""
    ref = build("standard")
    mhc = build("mhc", seed=5, h_res_map=h_res_map)
    missing, unexpected = mhc.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all("mixing" in k for k in missing)
    for m in mhc.model.mixing_modules():
        with torch.no_grad():
            m.alpha[:2] = 0.0  # a_pre, a_post; a_res keeps its init 0.01
        assert m.alpha[2].item() == pytest.approx(0.01)
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(mhc(ids).logits, ref(ids).logits, atol=1e-3, rtol=0)
    if h_res_map == "orthogonal":  # H_res = I exactly at init; a random phi_res would break Pre-Norm
        m = mhc.model.mixing_modules()[0]
        assert torch.equal(m.coefficients(torch.randn(5, 4, 32))[2], torch.eye(4).expand(5, 4, 4))
        with torch.no_grad():
            for m in mhc.model.mixing_modules():
                m.phi[:, 8:].normal_(0, 0.02)
            m.alpha[2] = 1.0
            assert not torch.allclose(mhc(ids).logits, ref(ids).logits, atol=1e-3)


@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("h_res_map", ["sinkhorn", "kronecker", "orthostochastic", "orthogonal"])
def test_more_streams_forward_backward(h_res_map, n):
    model = perturbed(build("mhc", h_res_map=h_res_map, n_streams=n, num_hidden_layers=1)).train()
    ids = torch.randint(3, 97, (2, 6))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    m = model.model.mixing_modules()[0]
    K = H_RES_MAPS[h_res_map].num_outputs(n)
    assert m.phi.shape == (n * 32, 2 * n + K)
    assert m.phi.grad[:, 2 * n:].abs().sum() > 0 and torch.isfinite(m.phi.grad).all()
    with torch.no_grad():
        h = m.coefficients(torch.randn(3, n, 32))[2].double()
    assert h.shape == (3, n, n)
    if H_RES_MAPS[h_res_map].doubly_stochastic:
        tol = 1e-3 if h_res_map == "sinkhorn" else 1e-5  # sinkhorn: rows only to the iterations' tolerance
        assert (h >= 0).all() and (h.sum(-2) - 1).abs().max() < 1e-5 and (h.sum(-1) - 1).abs().max() < tol
    else:
        eye = torch.eye(n, dtype=h.dtype).expand(3, n, n)
        torch.testing.assert_close(h @ h.transpose(-1, -2), eye, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h_res_map", [m for m in MAPS if m != "sinkhorn"])
def test_fused_coefficients_fall_back_to_the_reference(h_res_map, monkeypatch):
    """The fused coefficient kernel is sinkhorn-only. Stand in for it with a kernel that refuses
    K != n^2 (as the real one, built for 2n + n^2 columns, would be wrong): other maps must never be
    sent to it, and fused_kernels=True must give the reference result."""
    calls = []
    real_dispatch = residual_mhc.dispatch

    def sinkhorn_only_kernel(x_flat, phi, alpha, bias, n, eps):
        calls.append(phi.shape[1])
        if phi.shape[1] != 2 * n + n * n:
            raise AssertionError("sinkhorn-only coefficient kernel called with another map")
        return mhc_coefficients_reference(x_flat, phi, alpha, bias, n, eps)

    def dispatch(name, fused, device, n_streams=None, **kw):
        if name == "mhc_coefficients" and fused:
            return sinkhorn_only_kernel
        return real_dispatch(name, fused, device, n_streams, **kw)

    monkeypatch.setattr(residual_mhc, "dispatch", dispatch)
    ids = torch.randint(3, 97, (2, 7))
    ref = perturbed(build("mhc", h_res_map=h_res_map))
    fused = perturbed(build("mhc", h_res_map=h_res_map, fused_kernels=True))
    assert torch.equal(fused(ids).logits, ref(ids).logits) and not calls
    # sinkhorn does take the fused coefficient path (without the CPU kernels, whose mHC mix-in is one op)
    perturbed(build("mhc", fused_kernels=True, cpu_kernels=False))(ids)
    assert calls and all(k == 8 + 16 for k in calls)


def _grads(h_res_map, recompute):
    model = perturbed(build("mhc", h_res_map=h_res_map, mixing_recompute=recompute, mhc_init="identity",
                            sinkhorn_iters=6)).train()
    return loss_and_grads(model, torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("h_res_map", [m for m in MAPS if m != "sinkhorn"])
def test_mixing_recompute_equals_none_bit_for_bit(h_res_map):
    loss_ref, grads_ref = _grads(h_res_map, "none")
    for recompute in ("sublayer", "block"):
        loss, grads = _grads(h_res_map, recompute)
        assert torch.equal(loss, loss_ref), recompute
        for name, g in grads_ref.items():
            assert torch.equal(grads[name], g), f"{h_res_map} {recompute}: {name}"


@pytest.mark.parametrize("h_res_map", MAPS)
def test_cached_generation_logits_equal_a_full_forward(h_res_map):
    model = perturbed(build("mhc", h_res_map=h_res_map))
    prompt = torch.randint(3, 97, (2, 5))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        full = model(out.sequences, use_cache=False).logits
    assert len(out.logits) == 6
    for i, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, full[:, prompt.shape[1] - 1 + i], atol=1e-4, rtol=1e-4)
