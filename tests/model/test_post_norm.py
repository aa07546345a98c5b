"""block_norm='post': norm(x + F(x)) per sub-layer (original Transformer), standard and grid.
(grid R = 1 equals standard for both norms: tests/model/test_modes.py.)"""
import pytest
import torch

from mhc_lm.model import MhcLmForCausalLM
from mhc_lm.model.modeling_mhc_lm import MhcLmRMSNorm, rotary_cos_sin

from .helpers import tiny_config


def build(mode, seed=0, **overrides):
    torch.manual_seed(seed)
    return MhcLmForCausalLM(tiny_config(mode, block_norm="post", **overrides)).eval()


@pytest.mark.parametrize("mode", ["standard", "grid"])
def test_post_norm_is_causal(mode):
    model = build(mode)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 5) % 97
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_post_norm_layer_by_hand():
    """One layer computes norm_2(h + MLP(h)) with h = norm_1(x + Attn(x)), no norm before a sub-layer."""
    model = build("standard", num_hidden_layers=1)
    layer = model.model.layers[0]
    with torch.no_grad():  # distinct norm weights so that swapping or skipping one shows
        layer.input_layernorm.weight.uniform_(0.5, 1.5)
        layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 6, 32)
        pos = torch.arange(6).expand(2, 6)
        emb = rotary_cos_sin(pos, 8, 10000.0, x.dtype)
        h = layer.input_layernorm(x + layer.self_attn(x, emb))
        expected = layer.post_attention_layernorm(h + layer.mlp(h))
        torch.testing.assert_close(layer(x, emb), expected)


def test_post_norm_has_the_same_parameters_and_differs_from_pre_norm():
    pre = MhcLmForCausalLM(tiny_config("standard"))
    post = build("standard")
    assert pre.state_dict().keys() == post.state_dict().keys()
    post.load_state_dict(pre.state_dict())
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        assert not torch.allclose(pre.eval()(ids).logits, post(ids).logits)
    assert sum(isinstance(m, MhcLmRMSNorm) for m in post.modules()) == 2 * 4 + 1


@pytest.mark.parametrize("mode", ["standard", "grid"])
def test_post_norm_cached_generation_equals_full_forward(mode):
    model = build(mode)
    prompt = torch.randint(3, 97, (2, 5))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        full = model(out.sequences, use_cache=False).logits
    for i, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, full[:, prompt.shape[1] - 1 + i], atol=1e-4, rtol=1e-4)
