"""evals.stability on a tiny exported model with a prepared corpus."""

import json

import pytest
import torch
import yaml

from evals.stability import main, probe_batches, run_stability
from mhc_lm.config_utils import ConfigError
from mhc_lm.data import prepare_data
from mhc_lm.metrics import probe_model
from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
from mhc_lm.run_dir import RunDirError
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
    with pytest.raises(RunDirError, match="config.json missing"):
        run_stability(tmp_path)
    (tmp_path / "hf").symlink_to(run_dir / "hf")
    with pytest.raises(RunDirError, match="no data.out_dir"):
        run_stability(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"out_dir": str(tmp_path / "missing")}}))
    with pytest.raises(RunDirError, match="prepared data folder not found"):
        run_stability(tmp_path)


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("flag", ["--batches", "--batch-size", "--seq-len"])
def test_sizes_must_be_at_least_one(run_dir, tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main([str(run_dir), flag, "0", "--out", str(tmp_path / "s.json")])
    assert exc.value.code == 2 and flag in _err_line(capsys)
    with pytest.raises(ConfigError, match="--batches must be >= 1"):
        run_stability(run_dir, batches=0, out=tmp_path / "s.json")
    assert not list(tmp_path.iterdir())


def test_seq_len_beyond_the_model_positions_is_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main([str(run_dir), "--seq-len", "64", "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert "64" in line and "max_position_embeddings 32" in line and "--seq-len" in line
    assert not out.exists()
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    other = tmp_path / "run"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "seq_len": 48}}))
    with pytest.raises(ConfigError, match=r"window length 48 \(data.seq_len .*max_position_embeddings 32"):
        run_stability(other, model_dir=run_dir / "hf")
    assert main([str(run_dir), "--seq-len", "32", "--batches", "1", "--out", str(out)]) == 0  # the limit itself
    assert json.loads(out.read_text())["batch_shape"] == [2, 32]


def test_out_directory_is_refused_before_probing(run_dir, tmp_path, capsys):
    target = tmp_path / "outdir"
    target.mkdir()
    assert main([str(run_dir), "--batches", "1", "--out", str(target)]) == 2
    assert "is a directory" in _err_line(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["outdir"]  # nothing written, no .tmp left


def test_write_json_atomic_leaves_no_tmp_file(tmp_path):
    from mhc_lm.files import write_json_atomic

    (tmp_path / "x.json").mkdir()
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_cuda_device_without_cuda_is_a_clear_error(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "s.json"
    assert main([str(run_dir), "--device", "cuda", "--out", str(out)]) == 2
    assert "CUDA is not available" in _err_line(capsys)
    assert main([str(run_dir), "--device", "gpu", "--out", str(out)]) == 2
    assert "not a torch device" in _err_line(capsys)
    assert not out.exists()
