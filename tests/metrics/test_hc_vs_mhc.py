"""HC with large random A_r: composite Amax explodes; mHC stays at 1 (doubly stochastic products)."""

import torch

from mhc_lm.metrics import probe_model
from tests.metrics.helpers import batch, tiny


def randomise(model, scale: float) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.model.mixing_modules():
            if hasattr(m, "static_alpha_r"):  # HC: A_r unconstrained
                m.static_alpha_r.copy_(torch.eye(m.n_streams) + scale * torch.randn(m.static_alpha_r.shape, generator=g))
            else:  # mHC: large random logits still go through Sinkhorn
                m.bias.copy_(scale * torch.randn(m.bias.shape, generator=g))
                m.alpha.fill_(1.0)
                m.phi.copy_(0.1 * torch.randn(m.phi.shape, generator=g))


def test_hc_composite_amax_far_above_mhc():
    hc, mhc = tiny("hc", layers=4, n_streams=4), tiny("mhc", layers=4, n_streams=4, sinkhorn_iters=20)
    randomise(hc, 2.0)
    randomise(mhc, 2.0)
    b = batch()
    out_hc = probe_model(hc, b, gradients=False)
    out_mhc = probe_model(mhc, b, gradients=False)
    # 8 sub-layers of I + 2 N(0, 1) (4 x 4): the composite gain grows geometrically
    assert out_hc["amax/fwd/composite"] > 50 and out_hc["amax/bwd/composite"] > 50
    # every new stream is a convex combination of old ones: forward gain 1 exactly, backward within Sinkhorn tolerance
    assert abs(out_mhc["amax/fwd/composite"] - 1) < 1e-3
    assert abs(out_mhc["amax/bwd/composite"] - 1) < 0.05
    assert out_hc["amax/fwd/composite"] > 50 * out_mhc["amax/fwd/composite"]
    assert all(abs(out_mhc[f"amax/fwd/layer_{i:02d}"] - 1) < 1e-3 for i in range(4))


def test_init_gains_are_one():
    """At init HC has A_r = I and mHC a doubly stochastic H_res: both behave like Pre-Norm (gain 1)."""
    for mode in ("hc", "mhc"):
        out = probe_model(tiny(mode, layers=3), batch(), gradients=False)
        assert abs(out["amax/fwd/composite"] - 1) < 1e-3 and abs(out["amax/bwd/composite"] - 1) < 1e-3, mode
