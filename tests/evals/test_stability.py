"""evals.stability on a tiny exported model with a prepared corpus."""

import json

import pytest
import torch
import yaml

from evals.stability import main, probe_batches, run_stability
from mhc_lm.data import prepare_data
from mhc_lm.metrics import probe_model
from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
from tests.data.conftest import small_config, synthetic_docs, write_txt


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stability")
    write_txt(tmp / "txt", synthetic_docs(n_docs=30))
    prepared = prepare_data(small_config(tmp))
    run = tmp / "run"
    torch.manual_seed(0)
    model = MhcLmForCausalLM(MhcLmConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                         residual_mode="hc", n_streams=4))
    with torch.no_grad():
        for m in model.model.mixing_modules():
            m.static_alpha_r.add_(torch.randn(4, 4, generator=torch.Generator().manual_seed(m.sublayer_idx)))
    model.save_pretrained(run / "hf")
    cfg = {"model": {"residual_mode": "hc"}, "data": {"out_dir": str(prepared), "seq_len": 16, "seed": 0},
           "train": {"micro_batch_size": 2, "seed": 0}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def test_offline_probe_matches_direct_probe(run_dir):
    assert main([str(run_dir), "--batches", "2"]) == 0
    rec = json.loads((run_dir / "stability.json").read_text())
    assert rec["residual_mode"] == "hc" and rec["split"] == "val" and rec["batch_shape"] == [2, 16]
    m = rec["metrics"]
    assert {"amax/fwd/layer_02", "amax/fwd/composite", "vanished/1e-07", "grad_std", "rms/act/layer_00",
            "rms/grad/layer_02"} <= m.keys()
    assert m["amax/fwd/composite"] > 2  # A_r = I + N(0, 1) over 6 sub-layers
    model = MhcLmForCausalLM.from_pretrained(run_dir / "hf").eval()
    batches, _ = probe_batches(run_dir, None, 2, None, None)
    direct = [probe_model(model, b) for b in batches]
    for key in ("amax/fwd/composite", "vanished/1e-05", "rms/act/layer_01"):
        assert m[key] == pytest.approx((direct[0][key] + direct[1][key]) / 2, rel=1e-5)
    assert m["amax/fwd/composite_max"] == pytest.approx(max(d["amax/fwd/composite_max"] for d in direct), rel=1e-5)


def test_clear_errors(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="config.json missing"):
        run_stability(tmp_path)
    (tmp_path / "hf").symlink_to(run_dir / "hf")
    with pytest.raises(SystemExit, match="no data.out_dir"):
        run_stability(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"out_dir": str(tmp_path / "missing")}}))
    with pytest.raises(SystemExit, match="prepared data folder not found"):
        run_stability(tmp_path)
