import math

import pytest
import torch

from mhc_lm.model import MhcLmForCausalLM
from mhc_lm.model.stream_ops import post_res_reference, pre_mix_reference

from .helpers import MODES, tiny_config


def build(mode, seed=0, **overrides):
    torch.manual_seed(seed)
    return MhcLmForCausalLM(tiny_config(mode, **overrides)).eval()


def with_block_weights_of(model, reference):
    """Copy every parameter the two models share (block F, embeddings, norms)."""
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected
    assert all("mixing" in k for k in missing), missing
    return model


@pytest.mark.parametrize("mode", MODES)
def test_causality(mode):
    model = build(mode)
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (2, 12))
    t = 7
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 5) % 97
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("n_streams", [1, 4])
def test_hc_at_init_equals_standard(n_streams):
    ref = build("standard")
    hc = with_block_weights_of(build("hc", seed=5, n_streams=n_streams), ref)
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(hc(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


def test_hc_at_init_equals_standard_under_bf16_autocast():
    """The mixing runs in fp32 under autocast: HC at init stays exactly Pre-Norm (the residual
    stream and A_r are not rounded to bf16 at each sub-layer)."""
    ref = build("standard")
    hc = with_block_weights_of(build("hc", seed=5, n_streams=4), ref)
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = hc(ids).logits, ref(ids).logits
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("n_streams", [1, 4])
@pytest.mark.parametrize("h_res", ["identity", "uniform"])
def test_mhc_with_zero_gates_equals_standard(n_streams, h_res):
    ref = build("standard")
    mhc = with_block_weights_of(build("mhc", seed=5, n_streams=n_streams), ref)
    n = n_streams
    # H_pre averages the streams, H_post = 1, H_res = I (or uniform 1/n: identity-equivalent on identical streams)
    b_pre = torch.full((n,), math.log(1 / (n - 1)) if n > 1 else 30.0)  # sigmoid(b_pre) = 1/n
    b_res = 30.0 * torch.eye(n) if h_res == "identity" else torch.zeros(n, n)
    for m in mhc.model.mixing_modules():
        with torch.no_grad():
            m.alpha.zero_()
            m.bias.copy_(torch.cat([b_pre, torch.zeros(n), b_res.flatten()]))
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(mhc(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


def test_mhc_default_init_is_prenorm_up_to_norm_eps():
    """With identical streams and doubly stochastic H_res, default mHC init is Pre-Norm (docs/manifolds.md, "Init")."""
    ref = build("standard")
    mhc = with_block_weights_of(build("mhc", seed=5), ref)
    for m in mhc.model.mixing_modules():
        with torch.no_grad():
            m.alpha.zero_()
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(mhc(ids).logits, ref(ids).logits, atol=1e-3, rtol=0)


@pytest.mark.parametrize("block_norm", ["pre", "post"])
def test_grid_r1_equals_standard(block_norm):
    ref = build("standard", block_norm=block_norm)
    grid = build("grid", seed=5, grid_size=1, block_norm=block_norm)
    grid.load_state_dict(ref.state_dict())
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        assert torch.equal(grid(ids).logits, ref(ids).logits)


def test_grid_topology_differs_from_sequential():
    ref = build("standard")
    grid = build("grid", seed=5, grid_size=2)
    grid.load_state_dict(ref.state_dict())
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        assert not torch.allclose(grid(ids).logits, ref(ids).logits, atol=1e-4)


def test_grid_merge_rule_by_hand():
    """2x2 grid of scalar 'blocks': out = F11((F01(F00(x)) + F10(F00(x))) / 2)."""
    from mhc_lm.model.residual_grid import grid_forward

    layers = [torch.nn.Module() for _ in range(4)]
    for layer, k in zip(layers, [2.0, 3.0, 5.0, 7.0]):
        layer.k = k
    out = grid_forward(layers, torch.tensor(1.0), 2, lambda layer, z: z * layer.k)
    assert out.item() == pytest.approx(7.0 * (3.0 * 2.0 + 5.0 * 2.0) / 2)


@pytest.mark.parametrize("mode", ["hc", "mhc"])
def test_changing_h_res_changes_output(mode):
    """Guards against the mixed residual being silently replaced by the unmixed one (hyper-connections #8)."""
    model = build(mode)
    ids = torch.randint(3, 97, (2, 10))
    mods = model.model.mixing_modules()
    with torch.no_grad():
        for m in mods:  # first make the streams differ, else any stochastic mixing is invisible
            if mode == "hc":
                m.static_beta.copy_(torch.tensor([1.0, 0.0, 2.0, 1.0]))
            else:
                m.alpha[1] = 5.0
        base = model(ids).logits
        for m in mods:  # then change only the residual mixing
            if mode == "hc":
                m.static_alpha_r.copy_(torch.eye(4)[[1, 0, 3, 2]])
            else:
                m.alpha[2] = 5.0
        changed = model(ids).logits
    assert not torch.allclose(base, changed, atol=1e-4)


def test_mixing_orientation_3x3_by_hand():
    """new stream j = sum_i H[i, j] old stream i, plus H_post[j] f."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])  # (N=1, n=3, C=2)
    H = torch.tensor([[[0.5, 0.2, 0.3], [0.25, 0.5, 0.25], [0.25, 0.3, 0.45]]])  # [i, j]
    f = torch.tensor([[10.0, 20.0]])
    h_post = torch.tensor([[1.0, 0.0, 2.0]])
    out = post_res_reference(x, f, H, h_post)
    expected_j0 = 0.5 * x[0, 0] + 0.25 * x[0, 1] + 0.25 * x[0, 2] + 1.0 * f[0]
    expected_j2 = 0.3 * x[0, 0] + 0.25 * x[0, 1] + 0.45 * x[0, 2] + 2.0 * f[0]
    torch.testing.assert_close(out[0, 0], expected_j0)
    torch.testing.assert_close(out[0, 2], expected_j2)
    torch.testing.assert_close(pre_mix_reference(x, torch.tensor([[1.0, 2.0, 0.5]])), torch.tensor([[2.0, 3.0]]))


def test_mhc_h_res_is_doubly_stochastic_and_recorded():
    model = build("mhc")
    for m in model.model.mixing_modules():
        m.record_mixing = True
        with torch.no_grad():
            m.alpha.fill_(3.0)  # a strongly token-dependent H_res
    with torch.no_grad():
        model(torch.randint(3, 97, (2, 6)))
    mods = model.model.mixing_modules()
    assert len(mods) == 2 * 4
    for m in mods:
        M = m.last_mixing  # (B, T, n, n), x_new = M @ x_old
        assert M.shape == (2, 6, 4, 4) and M.dtype == torch.float32
        assert torch.allclose(M.sum(-1), torch.ones(2, 6, 4), atol=1e-5)  # each new stream: convex combination
        assert torch.allclose(M.sum(-2), torch.ones(2, 6, 4), atol=1e-3)


def test_mhc_init_not_saturated():
    model = build("mhc", mhc_init="identity")
    ids = torch.randint(3, 97, (2, 8))
    model.train()
    model(ids, labels=ids).loss.backward()
    for m in model.model.mixing_modules():
        assert m.phi.grad.abs().sum() > 0 and m.bias.grad.abs().sum() > 0 and m.alpha.grad.abs().sum() > 0
        h_res = m.coefficients(torch.randn(5, 4, 32))[2]
        assert 0.5 < h_res.diagonal(dim1=-2, dim2=-1).min() < 0.999  # near I, not frozen at I


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(residual_mode="resnet"), "residual_mode"),
        (dict(residual_mode="grid", num_hidden_layers=6, grid_size=2), "num_hidden_layers"),
        (dict(n_streams=0), "n_streams"),
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(sinkhorn_iters=-1), "sinkhorn_iters"),
    ],
)
def test_invalid_config_names_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_forward_backward(mode):
    model = build(mode).train()
    ids = torch.randint(3, 97, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        if "mixing" in name:
            assert p.dtype == torch.float32


@pytest.mark.parametrize("mode", MODES)
def test_overfits_fixed_batch(mode):
    model = build(mode).train()
    torch.manual_seed(0)
    ids = torch.randint(3, 97, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = model(ids, labels=ids).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


@pytest.mark.parametrize("mode", MODES)
def test_no_zero_dim_parameters(mode):
    # DeepSpeed broadcasts every parameter as a byte view at prepare(); a 0-dim tensor cannot give one
    # ("self.dim() cannot be 0 to view Float as Byte"), which broke hc under ZeRO-1/2/3
    model = build(mode, hc_dynamic=True)
    assert all(p.dim() >= 1 for p in model.parameters()), [n for n, p in model.named_parameters() if p.dim() == 0]
    for p in model.parameters():
        p.data.view(torch.uint8)


def test_hc_loads_checkpoints_with_zero_dim_scales():
    model = build("hc", hc_dynamic=True)
    state = model.state_dict()
    old = {k: (v.reshape(()) if k.endswith(("dynamic_alpha_scale", "dynamic_beta_scale")) else v) for k, v in state.items()}
    assert any(v.dim() == 0 for v in old.values())
    fresh = build("hc", seed=1, hc_dynamic=True)
    fresh.load_state_dict(old)
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits)
