"""model.qk_norm: RMSNorm on each head's queries and keys, before RoPE, in every residual mode."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mhc_lm.model import MhcLmForCausalLM
from mhc_lm.model.attention import MhcLmAttention
from tests.model.helpers import MODES, one_thread, perturbed, tiny_config


def _attention_output(attn, x, T):
    from mhc_lm.model.attention import rotary_cos_sin

    pos = torch.arange(T).unsqueeze(0)
    return attn(x, rotary_cos_sin(pos, attn.head_dim, 10000.0, x.dtype))


@pytest.mark.parametrize("qk_norm", [True, False])
def test_query_and_key_scale_cancels_only_with_qk_norm(qk_norm):
    """Scaling q_proj and k_proj by 50 leaves the attention unchanged under qk_norm (the norms remove
    each head's scale); without it the logits grow 2500-fold and the output moves."""
    torch.manual_seed(0)
    attn = MhcLmAttention(tiny_config(qk_norm=qk_norm), layer_idx=0).eval()
    x = torch.randn(2, 7, 32)
    before = _attention_output(attn, x, 7)
    with torch.no_grad():
        attn.q_proj.weight.mul_(50.0)
        attn.k_proj.weight.mul_(50.0)
    after = _attention_output(attn, x, 7)
    moved = (after - before).abs().max().item()
    if qk_norm:
        assert moved < 1e-4
    else:
        assert moved > 1e-2


def test_qk_norm_matches_a_by_hand_attention():
    torch.manual_seed(1)
    cfg = tiny_config(qk_norm=True, num_key_value_heads=4)
    attn = MhcLmAttention(cfg, layer_idx=0).eval()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    B, T, H, D = 1, 5, 4, 8
    x = torch.randn(B, T, 32)
    got = _attention_output(attn, x, T)

    def norm(t, w):  # (B, H, T, D), RMS over D
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * w

    from mhc_lm.model.attention import apply_rotary, rotary_cos_sin

    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, H, D).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, H, D).transpose(1, 2)
    cos, sin = rotary_cos_sin(torch.arange(T).unsqueeze(0), D, 10000.0, x.dtype)
    q, k = apply_rotary(norm(q, attn.q_norm.weight), cos, sin), apply_rotary(norm(k, attn.k_norm.weight), cos, sin)
    scores = (q @ k.transpose(-1, -2)) / D**0.5
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
    torch.testing.assert_close(got, attn.o_proj(y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_with_qk_norm_is_causal_and_reloads_with_equal_logits(mode, tmp_path):
    torch.manual_seed(2)
    model = perturbed(MhcLmForCausalLM(tiny_config(mode, qk_norm=True))).eval()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.endswith("self_attn.q_norm.weight") for n in names)
    ids = torch.randint(3, 97, (2, 12))
    with one_thread(), torch.no_grad():
        logits = model(ids).logits
        changed = ids.clone()
        changed[:, 8:] = (changed[:, 8:] + 1) % 97
        assert torch.equal(model(changed).logits[:, :8], logits[:, :8])  # the future does not reach the past
    model.save_pretrained(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    assert loaded.config.qk_norm is True
    with one_thread(), torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, logits, atol=1e-5, rtol=0)


def test_qk_norm_is_a_run_config_key_and_its_gains_take_no_weight_decay():
    from mhc_lm.train.config import build_model_config, load_run_config
    from mhc_lm.train.optim import no_weight_decay

    cfg = load_run_config("configs/tiny_cpu.yaml", ["model.qk_norm=true"])
    model_config = build_model_config(cfg.model)
    assert model_config.qk_norm is True
    model = MhcLmForCausalLM(model_config)
    norms = {n: p for n, p in model.named_parameters() if ".q_norm." in n or ".k_norm." in n}
    assert len(norms) == 2 * model_config.num_hidden_layers
    assert all(no_weight_decay(n, p) for n, p in norms.items())
    assert build_model_config(load_run_config("configs/tiny_cpu.yaml").model).qk_norm is False
