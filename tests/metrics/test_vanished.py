"""Vanished-gradient ratio with hand-set gradients; the model probe leaves training gradients alone."""

import numpy as np
import pytest
import torch
from torch import nn

from mhc_lm.metrics import eps_key, probe_model, vanished_ratio
from mhc_lm.metrics.probe import gradient_params
from tests.metrics.helpers import batch, tiny

VALUES_A = [0.0, 5e-5, 2e-4, -3e-6]
VALUES_B = [[1e-8, -0.5], [5e-7, 2e-5]]
# |g|: 0, 5e-5, 2e-4, 3e-6, 1e-8, 0.5, 5e-7, 2e-5  (8 elements)
EXPECTED = {"vanished/1e-04": 6 / 8, "vanished/1e-05": 4 / 8, "vanished/1e-06": 3 / 8, "vanished/1e-07": 2 / 8}


def test_eps_names():
    assert [eps_key(e) for e in (1e-4, 1e-5, 1e-6, 1e-7)] == list(EXPECTED)


def test_ratio_on_hand_set_gradients():
    out = vanished_ratio([torch.tensor(VALUES_A), torch.tensor(VALUES_B)])
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value)
    flat = np.array(VALUES_A + sum(VALUES_B, []), dtype=np.float32).astype(np.float64)
    assert out["grad_std"] == pytest.approx(flat.std(), rel=1e-9)


class HandSet(nn.Module):
    """loss = sum(a * c_a) + sum(b * c_b): dloss/da = c_a, dloss/db = c_b exactly."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(4))
        self.b = nn.Parameter(torch.ones(2, 2))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self):
        return (self.a * torch.tensor(VALUES_A)).sum() + (self.b * torch.tensor(VALUES_B)).sum() + self.frozen.sum()


def test_ratio_on_a_model_with_hand_set_gradients():
    model = HandSet()
    params = gradient_params(model)
    assert [n for n, _ in params] == ["a", "b"]  # frozen parameters are not counted
    grads = torch.autograd.grad(model(), [p for _, p in params])
    out = vanished_ratio(grads)
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value)
    with pytest.raises(ValueError, match="no gradients"):
        vanished_ratio([])


@pytest.mark.parametrize("mode", ["standard", "hc", "mhc", "grid"])
def test_probe_names_and_no_side_effects(mode):
    model = tiny(mode)
    sentinel = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    out = probe_model(model, batch())
    for n, p in model.named_parameters():  # training gradients untouched
        assert torch.equal(p.grad, sentinel[n]), n
    assert all(not getattr(m, "record_mixing", False) and m.last_mixing is None for m in model.model.mixing_modules())
    assert {f"rms/act/layer_{i:02d}" for i in range(2)} <= out.keys()
    assert {f"rms/grad/layer_{i:02d}" for i in range(2)} <= out.keys()
    assert set(EXPECTED) | {"grad_std", "probe/loss", "amax/fwd/composite", "amax/bwd/composite"} <= out.keys()
    ratios = [out[k] for k in EXPECTED]
    assert all(0 <= r <= 1 for r in ratios) and ratios == sorted(ratios, reverse=True)  # nested thresholds
    assert all(isinstance(v, float) for v in out.values())
    if mode in ("hc", "mhc"):
        assert {"amax/fwd/layer_00", "amax/bwd/layer_01"} <= out.keys()
    else:
        assert out["amax/fwd/composite"] == 1.0


def test_probe_vanished_matches_manual_backward():
    model = tiny("standard")
    b = batch(1)
    out = probe_model(model, b, exclude=())
    loss = model(input_ids=b["input_ids"], shift_labels=b["labels"]).loss
    loss.backward()
    manual = vanished_ratio([p.grad for p in model.parameters()])
    for key in list(EXPECTED) + ["grad_std"]:
        assert out[key] == pytest.approx(manual[key], rel=1e-6)


def test_backbone_ratio_leaves_the_mixing_parameters_out():
    std = probe_model(tiny("standard"), batch(), amax=False)
    for e in ("1e-04", "1e-05", "1e-06", "1e-07"):  # no mixing parameters: both sets are the same
        assert std[f"vanished_backbone/{e}"] == std[f"vanished/{e}"]
    assert std["grad_std_backbone"] == std["grad_std"]

    model = tiny("mhc", n_streams=4)
    got = probe_model(model, batch(), amax=False)
    params = [(n, p) for n, p in gradient_params(model, ("embed_tokens", "lm_head")) if "_mixing." not in n]
    loss = model(input_ids=batch()["input_ids"], shift_labels=batch()["labels"], use_cache=False).loss
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(p) for g, (_, p) in zip(grads, params)]
    want = vanished_ratio(grads)
    for e in ("1e-04", "1e-05", "1e-06", "1e-07"):
        assert got[f"vanished_backbone/{e}"] == pytest.approx(want[f"vanished/{e}"], abs=1e-12)
    assert got["vanished_backbone/1e-07"] < got["vanished/1e-07"]  # mHC's phi gradients are tiny at init
