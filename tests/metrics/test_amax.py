"""Amax gain: identity, hand-computed 3x3, products, doubly stochastic matrices."""

import pytest
import torch

from mhc_lm.metrics import amax_gain, composite, inf_norm, mixing_amax_metrics
from mhc_lm.model import sinkhorn


def test_identity_gain_is_one():
    fwd, bwd = amax_gain(torch.eye(4))
    assert fwd.item() == 1.0 and bwd.item() == 1.0
    fwd, bwd = amax_gain(composite([torch.eye(3)] * 10))
    assert fwd.item() == 1.0 and bwd.item() == 1.0


def test_hand_computed_3x3():
    m = torch.tensor([[1.0, -2.0, 0.5],   # row sum -0.5, |.|-sum 3.5
                      [0.0, 3.0, -1.0],   # row sum  2.0, |.|-sum 4
                      [-1.0, -1.0, -1.0]])  # row sum -3.0, |.|-sum 3
    fwd, bwd = amax_gain(m)  # column sums 0, 0, -1.5
    assert fwd.item() == 3.0
    assert bwd.item() == 1.5
    assert inf_norm(m).item() == 4.0  # differs from the forward gain because of negative entries


def test_product_order_and_gains():
    a = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # first layer
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # second layer
    c = composite([a, b])
    assert torch.equal(c, torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.float64))  # B @ A, not A @ B
    fwd, bwd = amax_gain(c)  # row sums 2, 3; column sums 1, 4
    assert (fwd.item(), bwd.item()) == (3.0, 4.0)


def test_batched_shapes_and_errors():
    m = torch.randn(2, 5, 4, 4)
    fwd, bwd = amax_gain(m)
    assert fwd.shape == bwd.shape == (2, 5)
    assert torch.allclose(fwd[1, 3], m[1, 3].sum(-1).abs().max())
    with pytest.raises(ValueError, match="square"):
        amax_gain(torch.randn(3, 4))


def test_doubly_stochastic_products_stay_at_one():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, 4, generator=g) * 3
    mats = [m for m in sinkhorn(logits, 40)]
    fwd, bwd = amax_gain(composite(mats))
    assert fwd.item() == pytest.approx(1.0, abs=1e-3) and bwd.item() == pytest.approx(1.0, abs=1e-3)


def test_mixing_metrics_names_and_layer_grouping():
    a = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).expand(2, 3, 2, 2)  # (B, T, n, n)
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0]]).expand(2, 3, 2, 2)
    out = mixing_amax_metrics([a, b, b, a])  # two layers of (attn, mlp)
    assert out["amax/fwd/layer_00"] == 3.0 and out["amax/bwd/layer_00"] == 4.0  # B @ A
    assert out["amax/fwd/layer_01"] == 4.0 and out["amax/bwd/layer_01"] == 6.0  # A @ B = [[1,3],[0,3]]: rows 4, 3; cols 1, 6
    # single matrices: a rows 2, 1 / cols 1, 2; b rows 1, 3 / cols 1, 3
    assert [out[f"amax/fwd/sublayer_{i:02d}"] for i in range(4)] == [2.0, 3.0, 3.0, 2.0]
    assert [out[f"amax/bwd/sublayer_{i:02d}"] for i in range(4)] == [2.0, 3.0, 3.0, 2.0]
    full = composite([a, b, b, a])[0, 0]
    fwd, bwd = amax_gain(full)
    assert out["amax/fwd/composite"] == fwd.item() and out["amax/bwd/composite"] == bwd.item()
    with pytest.raises(ValueError, match="multiple"):
        mixing_amax_metrics([a, b, a])


def test_spectral_composite_per_manifold():
    """spectral/composite: 1 for orthogonal maps and their products (Amax is not), 1 (<= 1 and M 1 = 1)
    for DS maps, large for HC's unconstrained matrices."""
    from mhc_lm.metrics.amax import spectral_norm
    from mhc_lm.model.h_res_maps import H_RES_MAPS

    g = torch.Generator().manual_seed(0)
    n, L = 4, 16
    ortho = [H_RES_MAPS["orthogonal"](3 * torch.randn(5, 6, generator=g), n).transpose(-1, -2) for _ in range(L)]
    out = mixing_amax_metrics([q.reshape(1, 5, n, n) for q in ortho])
    assert out["spectral/composite"] == pytest.approx(1.0, abs=1e-6)
    assert out["spectral/composite_max"] == pytest.approx(1.0, abs=1e-6)
    assert out["amax/fwd/composite_max"] > 1.05  # negative entries: Amax says nothing about the gain here
    for name in ("sinkhorn", "permutation", "kronecker", "orthostochastic"):
        K = H_RES_MAPS[name].num_outputs(n)
        mats = [H_RES_MAPS[name](3 * torch.randn(5, K, generator=g), n).transpose(-1, -2).reshape(1, 5, n, n)
                for _ in range(L)]
        out = mixing_amax_metrics(mats)
        tol = 1e-3 if H_RES_MAPS[name].iterative else 1e-5  # sinkhorn: rows sum to 1 only to its tolerance
        # <= 1 (||M||_2^2 <= ||M||_1 ||M||_inf) and >= 1 (M 1 = 1): exactly 1 for every DS product
        assert 1.0 - tol <= out["spectral/composite"] <= out["spectral/composite_max"] <= 1.0 + tol, name
    diag = torch.diag(torch.tensor([3.0, -5.0, 1.0]))
    torch.testing.assert_close(spectral_norm(diag), torch.tensor(5.0, dtype=torch.float64))
    hc = [torch.eye(n) + 0.3 * torch.rand(n, n, generator=g) for _ in range(L)]  # HC-like: positive, row sums > 1
    assert mixing_amax_metrics([m.expand(1, 2, n, n) for m in hc])["spectral/composite"] > 100.0


@pytest.mark.parametrize("h_res_map", ["orthogonal", "kronecker"])
def test_probe_reports_spectral_composite(h_res_map):
    from mhc_lm.metrics.probe import probe_model

    from .helpers import batch, tiny

    model = tiny("mhc", layers=2, n_streams=4, h_res_map=h_res_map)
    with torch.no_grad():  # off the init (orthogonal: H_res = I there)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    metrics = probe_model(model.eval(), batch(), gradients=False)
    if h_res_map == "orthogonal":
        assert metrics["spectral/composite"] == pytest.approx(1.0, abs=1e-5)
        assert metrics["amax/fwd/composite_max"] != pytest.approx(1.0, abs=1e-3)
    else:
        assert metrics["spectral/composite_max"] <= 1.0 + 1e-5
    assert probe_model(tiny("standard").eval(), batch(), gradients=False)["spectral/composite"] == 1.0
