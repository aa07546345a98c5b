"""The H_res maps (mhc_lm/model/h_res_maps.py): exactness, gradients, orientation, init."""

import math

import pytest
import torch

from mhc_lm.model.h_res_maps import H_RES_MAPS, HResMap, get_h_res_map

EXACT_DS = ("permutation", "kronecker", "orthostochastic")
DS = ("sinkhorn",) + EXACT_DS
STREAMS = {"sinkhorn": (2, 3, 4, 8, 16), "permutation": (2, 3, 4, 5, 6), "kronecker": (2, 4, 8, 16),
           "orthostochastic": (2, 3, 4, 8, 16), "orthogonal": (2, 3, 4, 8, 16)}
CASES = [(name, n) for name, ns in STREAMS.items() for n in ns]


def random_logits(name: str, n: int, scale: float, seed: int = 0, tokens: int = 64, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, H_RES_MAPS[name].num_outputs(n), generator=g, dtype=torch.float64) * scale).to(dtype)


def test_registry_names_the_maps():
    assert list(H_RES_MAPS) == ["sinkhorn", "permutation", "kronecker", "orthostochastic", "orthogonal"]
    assert all(m.name == name for name, m in H_RES_MAPS.items())
    assert [name for name, m in H_RES_MAPS.items() if m.fused_coefficients] == ["sinkhorn"]
    with pytest.raises(ValueError, match="h_res_map must be one of"):
        get_h_res_map("birkhoff")


class _TransposedKronecker(HResMap):
    """A map defined here only: the config must take its name from the registry and its limits from
    its own `validate` (here: powers of 2 up to 4)."""

    name = "toy_kron_t"

    def validate(self, n):
        H_RES_MAPS["kronecker"].validate(n)
        if n > 4:
            raise ValueError(f"toy_kron_t is for n_streams <= 4, got {n}")

    def num_outputs(self, n):
        return H_RES_MAPS["kronecker"].num_outputs(n)

    def identity_bias(self, n):
        return H_RES_MAPS["kronecker"].identity_bias(n)

    def matrix(self, logits, n, **_):
        return H_RES_MAPS["kronecker"].matrix(logits, n).transpose(-1, -2)


def test_a_registered_map_is_a_config_value_and_validates_itself(monkeypatch):
    from mhc_lm.model import MhcLmForCausalLM

    from .helpers import tiny_config

    with pytest.raises(ValueError, match="h_res_map must be one of"):
        tiny_config("mhc", h_res_map="toy_kron_t")
    monkeypatch.setitem(H_RES_MAPS, "toy_kron_t", _TransposedKronecker())  # the one registry line
    with pytest.raises(ValueError, match="toy_kron_t is for n_streams <= 4, got 8"):
        tiny_config("mhc", h_res_map="toy_kron_t", n_streams=8)
    with pytest.raises(ValueError, match="needs n_streams a power of 2"):
        tiny_config("mhc", h_res_map="toy_kron_t", n_streams=3)
    with pytest.raises(ValueError, match="applies to residual_mode 'mhc' only"):
        tiny_config("hc", h_res_map="toy_kron_t")
    model = MhcLmForCausalLM(tiny_config("mhc", h_res_map="toy_kron_t", n_streams=4))
    assert model.model.layers[0].attn_mixing.bias.shape == (2 * 4 + 2,)  # [b_pre | b_post | K = log2 n]
    ids = torch.randint(3, 97, (2, 5))
    assert torch.isfinite(model(ids, labels=ids).loss)


@pytest.mark.parametrize("name, n", CASES)
def test_projection_width(name, n):
    expected = {"sinkhorn": n * n, "permutation": math.factorial(n), "kronecker": int(math.log2(n)),
                "orthostochastic": n * (n - 1) // 2, "orthogonal": n * (n - 1) // 2}[name]
    assert H_RES_MAPS[name].num_outputs(n) == expected
    for init in ("uniform", "identity"):
        bias = H_RES_MAPS[name].init_bias(n, init)
        assert bias.shape == (expected,) and bias.dtype == torch.float32


def test_invalid_stream_counts_and_shapes():
    with pytest.raises(ValueError, match="power of 2"):
        H_RES_MAPS["kronecker"].init_bias(6)
    with pytest.raises(ValueError, match="power of 2"):
        H_RES_MAPS["kronecker"](torch.zeros(2, 2), 6)
    with pytest.raises(ValueError, match=r"takes logits \(N, 6\)"):
        H_RES_MAPS["orthogonal"](torch.zeros(2, 16), 4)  # sinkhorn-shaped logits given to a Cayley map
    with pytest.raises(ValueError, match="init must be"):
        H_RES_MAPS["sinkhorn"].init_bias(4, "random")


@pytest.mark.parametrize("scale", [1.0, 50.0, 1e3])
@pytest.mark.parametrize("name, n", [c for c in CASES if c[0] in EXACT_DS])
def test_exactly_doubly_stochastic_without_iteration(name, n, scale):
    h = H_RES_MAPS[name](random_logits(name, n, scale, seed=n), n)
    assert h.shape == (64, n, n) and h.dtype == torch.float32 and torch.isfinite(h).all()
    assert (h >= 0).all()
    assert (h.sum(-1) - 1).abs().max() < 1e-6  # rows
    assert (h.sum(-2) - 1).abs().max() < 1e-6  # columns


@pytest.mark.parametrize("scale", [1.0, 50.0, 1e3])
@pytest.mark.parametrize("n", STREAMS["orthogonal"])
def test_orthogonal_is_orthogonal_and_not_doubly_stochastic(n, scale):
    q = H_RES_MAPS["orthogonal"](random_logits("orthogonal", n, scale, seed=n), n)
    eye = torch.eye(n)
    assert (q @ q.transpose(-1, -2) - eye).abs().max() < 1e-5
    assert (q.transpose(-1, -2) @ q - eye).abs().max() < 1e-5
    assert torch.allclose(torch.linalg.det(q.double()), torch.ones(64, dtype=torch.float64), atol=1e-5)  # Cayley: SO(n)
    assert (q < 0).any()  # entries may be negative: Amax is not bounded by 1 ...
    assert torch.allclose(torch.linalg.matrix_norm(q, ord=2), torch.ones(64), atol=1e-5)  # ... the spectral norm is
    # orthostochastic is the entrywise square of the same Q
    qs = H_RES_MAPS["orthostochastic"](random_logits("orthogonal", n, scale, seed=n), n)
    assert torch.allclose(qs, q * q, atol=1e-6)


@pytest.mark.parametrize("n", STREAMS["sinkhorn"])
def test_sinkhorn_map_is_the_sinkhorn_of_the_row_major_logits(n):
    from mhc_lm.model.fused_ops import sinkhorn

    logits = random_logits("sinkhorn", n, 1.0)
    h = H_RES_MAPS["sinkhorn"](logits, n, sinkhorn_iters=7)
    assert torch.equal(h, sinkhorn(logits.reshape(-1, n, n), 7))
    assert (h >= 0).all() and (h.sum(-2) - 1).abs().max() < 2e-6  # columns exact, rows to Sinkhorn tolerance


@pytest.mark.parametrize("name, n", CASES)
def test_gradcheck_float64(name, n):
    logits = random_logits(name, n, 1.0, seed=1, tokens=2, dtype=torch.float64).requires_grad_()
    fast = logits.numel() > 48  # K > 24 (sinkhorn, permutation n >= 5; Cayley n >= 8): random directions
    assert torch.autograd.gradcheck(lambda x: H_RES_MAPS[name](x, n, sinkhorn_iters=3), (logits,), fast_mode=fast)


def mix(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """new j = sum_i H[i, j] x_i, as stream_ops.post_res_reference: h (N, n, n), x (N, n, C)."""
    return torch.einsum("tij,tic->tjc", h, x)


def test_orientation_permutation_hand_example():
    # lexicographic permutations of (0, 1, 2): index 3 is (1, 2, 0): old 0 -> new 1, old 1 -> new 2, old 2 -> new 0
    logits = torch.full((1, 6), -1e3)
    logits[0, 3] = 1e3
    h = H_RES_MAPS["permutation"](logits, 3)
    assert torch.equal(h[0], torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]))
    x = torch.tensor([[[1.0], [2.0], [3.0]]])  # (1, 3, 1): streams x0, x1, x2
    assert torch.equal(mix(h, x).flatten(), torch.tensor([3.0, 1.0, 2.0]))  # new = (x2, x0, x1)


def test_orientation_orthogonal_hand_example():
    # n = 2, S = [[0, 1], [-1, 0]]: Q = (I - S)(I + S)^-1 = [[0, -1], [1, 0]], so new 0 = x1 and new 1 = -x0
    q = H_RES_MAPS["orthogonal"](torch.ones(1, 1), 2)
    assert torch.allclose(q[0], torch.tensor([[0.0, -1], [1, 0]]), atol=1e-7)
    assert torch.allclose(mix(q, torch.tensor([[[5.0], [7.0]]])).flatten(), torch.tensor([7.0, -5.0]))
    # n = 3, the (0, 2) entry: Q rotates streams 0 and 2 and leaves stream 1 alone; s = tan(pi/8) is 45 degrees
    q = H_RES_MAPS["orthogonal"](torch.tensor([[0.0, math.tan(math.pi / 8), 0.0]]), 3)[0]
    c = math.sqrt(0.5)
    assert torch.allclose(q, torch.tensor([[c, 0, -c], [0, 1, 0], [c, 0, c]]), atol=1e-6)
    assert torch.allclose(H_RES_MAPS["orthostochastic"](torch.tensor([[0.0, math.tan(math.pi / 8), 0.0]]), 3)[0],
                          torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]), atol=1e-6)


def test_kronecker_factor_order_hand_example():
    # n = 4, p_1 = 1 (outer factor, most significant bit: identity), p_2 = 0 (inner factor: swap)
    h = H_RES_MAPS["kronecker"](torch.tensor([[1e3, -1e3]]), 4)[0]
    swap = torch.tensor([[0.0, 1], [1, 0]])
    assert torch.equal(h, torch.kron(torch.eye(2), swap))  # streams (0 1)(2 3) swapped
    p = torch.sigmoid(torch.tensor([0.3, -1.2]))
    a1, a2 = (torch.stack([torch.stack([v, 1 - v]), torch.stack([1 - v, v])]) for v in p)
    assert torch.allclose(H_RES_MAPS["kronecker"](torch.tensor([[0.3, -1.2]]), 4)[0], torch.kron(a1, a2), atol=1e-7)


@pytest.mark.parametrize("name, n", CASES)
def test_init_biases(name, n):
    m = H_RES_MAPS[name]
    eye = torch.eye(n)
    h_uniform = m(m.init_bias(n, "uniform")[None], n)[0]
    h_identity = m(m.init_bias(n, "identity")[None], n)[0]
    if name in ("orthostochastic", "orthogonal"):  # S = 0: the identity exactly, for both inits
        assert torch.equal(h_uniform, eye) and torch.equal(h_identity, eye)
    else:  # uniform J/n exactly (Sinkhorn: to its eps); identity only in a limit: diag ~ 0.95 or more
        assert torch.allclose(h_uniform, torch.full((n, n), 1.0 / n), atol=1e-6)
        assert not torch.equal(h_identity, eye)
        assert h_identity.diagonal().min() > 0.95 and (h_identity - eye).abs().max() < 0.05
        assert h_identity.max() < 0.999  # no softmax / sigmoid / Sinkhorn started in saturation
    assert m.zero_projection_init == (name == "orthogonal")


@pytest.mark.parametrize("name, n", CASES)
def test_identical_streams_stay_identical_at_init(name, n):
    """Pre-Norm at init: uniform bias + the small dynamic part of the usual init (gate 0.01); for the
    orthogonal map the dynamic part is exactly zero (zero_projection_init)."""
    m = H_RES_MAPS[name]
    torch.manual_seed(n)
    logits = m.init_bias(n, "uniform").expand(32, m.num_outputs(n))  # (N, K)
    if not m.zero_projection_init:
        logits = logits + 0.01 * torch.randn(32, m.num_outputs(n))
    x = torch.randn(32, 1, 8).expand(32, n, 8)  # (N, n, C): n identical copies
    tol = 2e-6 if name == "sinkhorn" else 1e-6  # Sinkhorn: columns exact up to its eps
    assert torch.allclose(mix(m(logits, n), x), x, atol=tol * 8)
    if name == "orthogonal":  # and only with S = 0 exactly: a small random S breaks it
        s = 0.01 * torch.randn(32, m.num_outputs(n))
        assert not torch.allclose(mix(m(s, n), x), x, atol=1e-4)


@pytest.mark.parametrize("name", list(H_RES_MAPS))
def test_fp32_under_bf16_autocast_and_float64_kept(name):
    n = 4
    m = H_RES_MAPS[name]
    logits = random_logits(name, n, 1.0)
    ref = m(logits, n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = m(logits.bfloat16(), n)
        h32 = m(logits, n)
    assert h.dtype == torch.float32 and h32.dtype == torch.float32
    assert torch.equal(h32, ref)
    assert m(logits.double(), n).dtype == torch.float64
