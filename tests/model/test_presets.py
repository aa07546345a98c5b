from pathlib import Path

import pytest

from mhc_lm.presets import count_parameters, load_model_config

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"


def test_1b_presets_on_meta_share_block_f():
    counts = {mode: count_parameters(load_model_config(PRESETS / f"{mode}_1b.yaml")) for mode in ("standard", "hc", "mhc", "grid")}
    for mode, c in counts.items():
        assert 0.9e9 <= c["total"] <= 1.3e9, (mode, c)
        assert c["non_mixing"] == counts["standard"]["total"], mode  # same block F everywhere
    assert counts["standard"]["mixing"] == counts["grid"]["mixing"] == 0
    assert 0 < counts["hc"]["mixing"] < counts["mhc"]["mixing"]


def test_tiny_preset_is_a_few_million():
    c = count_parameters(load_model_config(PRESETS / "tiny.yaml", residual_mode="mhc"))
    assert 1e6 <= c["total"] <= 5e6


def test_unknown_preset_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((PRESETS / "tiny.yaml").read_text() + "hidden_sise: 3\n")
    with pytest.raises(ValueError, match="hidden_sise"):
        load_model_config(bad)
