"""Config validation of the per-mode variants: mixing_recompute, h_res_map, block_norm."""
import math

import pytest

from mhc_lm.model import MhcLmConfig

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(residual_mode="standard", mixing_recompute="block"), "hc or mhc only"),
    (dict(residual_mode="grid", mixing_recompute="sublayer"), "hc or mhc only"),
    (dict(residual_mode="mhc", mixing_recompute="everything"), "mixing_recompute must be one of"),
    (dict(residual_mode="mhc", mixing_recompute="block", mixing_recompute_layers=0), "positive integer"),
    (dict(residual_mode="mhc", mixing_recompute="sublayer", mixing_recompute_layers=2), "only applies to"),
    (dict(residual_mode="hc", h_res_map="kronecker"), "'mhc' only"),
    (dict(residual_mode="mhc", h_res_map="birkhoff"), "h_res_map must be one of"),
    (dict(residual_mode="mhc", h_res_map="permutation", n_streams=7), "n_streams <= 6"),
    (dict(residual_mode="mhc", h_res_map="kronecker", n_streams=6), "power of 2"),
    (dict(residual_mode="mhc", h_res_map="kronecker", n_streams=1), "power of 2"),
    (dict(residual_mode="hc", block_norm="post"), "standard and grid"),
    (dict(residual_mode="mhc", block_norm="post"), "standard and grid"),
    (dict(residual_mode="standard", block_norm="middle"), "block_norm must be one of"),
])
def test_invalid_variants_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MhcLmConfig(**TINY, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(residual_mode="mhc", mixing_recompute="sublayer"),
    dict(residual_mode="hc", mixing_recompute="block", mixing_recompute_layers=3),
    dict(residual_mode="mhc", h_res_map="permutation", n_streams=6),
    dict(residual_mode="mhc", h_res_map="kronecker", n_streams=8),
    dict(residual_mode="mhc", h_res_map="orthogonal", n_streams=16),
    dict(residual_mode="grid", grid_size=2, block_norm="post"),
    dict(residual_mode="standard", block_norm="post"),
])
def test_valid_variants(kwargs):
    config = MhcLmConfig(**TINY, **kwargs)
    assert all(getattr(config, k) == v for k, v in kwargs.items())


@pytest.mark.parametrize("n, layers", [(4, 24), (4, 4), (2, 1), (8, 64)])
def test_recompute_block_length_follows_the_paper(n, layers):
    config = MhcLmConfig(**{**TINY, "num_hidden_layers": layers}, residual_mode="mhc", n_streams=n,
                         mixing_recompute="block")
    expected = max(1, min(layers, round(math.sqrt(n * layers / (n + 2)))))
    assert config.resolved_recompute_layers == expected
    assert MhcLmConfig(**TINY, residual_mode="mhc", mixing_recompute="block",
                       mixing_recompute_layers=3).resolved_recompute_layers == 3
