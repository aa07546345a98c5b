"""from-llama / to-llama against transformers' own LlamaForCausalLM: logits, round trip, tokenizer,
and the refusals (exit 2, one line, nothing written)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.convert.helpers import convert, edit_config, llama_folder, logits, token_ids

CONFIGS = {
    # GQA (4 query heads, 2 KV heads), untied head, head_dim != hidden / heads, non-default eps
    "gqa-untied": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                       rms_norm_eps=1e-5),
    # MHA, tied embeddings, rope_theta 500000
    "mha-tied-theta": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_llama_matches_transformers_and_round_trips(name, tmp_path):
    src = llama_folder(tmp_path / "llama", **CONFIGS[name])
    reference = AutoModelForCausalLM.from_pretrained(src).eval()
    ids = token_ids(128)
    expected = logits(reference, ids)

    assert convert("from-llama", src, tmp_path / "mhc") == 0
    mhc = AutoModelForCausalLM.from_pretrained(tmp_path / "mhc", trust_remote_code=True).eval()
    assert type(mhc).__name__ == "MhcLmForCausalLM" and mhc.config.residual_mode == "standard"
    assert mhc.config.tie_word_embeddings == reference.config.tie_word_embeddings
    torch.testing.assert_close(logits(mhc, ids), expected, atol=1e-5, rtol=0)

    # the tokenizer files are copied as they are, and give the same ids
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "mhc" / f).read_bytes() == (src / f).read_bytes()
    text = "the model mix residual stream"
    converted, original = AutoTokenizer.from_pretrained(tmp_path / "mhc"), AutoTokenizer.from_pretrained(src)
    assert converted(text).input_ids == original(text).input_ids

    assert convert("to-llama", tmp_path / "mhc", tmp_path / "back") == 0
    back_files = {p.name for p in (tmp_path / "back").iterdir()}
    assert not any(n.endswith(".py") for n in back_files), back_files  # no remote code
    raw = json.loads((tmp_path / "back" / "config.json").read_text())
    assert "auto_map" not in raw and raw["model_type"] == "llama" and raw["architectures"] == ["LlamaForCausalLM"]
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()  # no trust_remote_code
    assert type(back).__module__.startswith("transformers.models.llama")
    torch.testing.assert_close(logits(back, ids), expected, atol=1e-5, rtol=0)
    assert (tmp_path / "back" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


def test_to_llama_reads_a_standard_run_dir(tmp_path):
    from mhc_lm.train import Trainer
    from mhc_lm.train.export import export_run_dir
    from tests.train.helpers import tiny_config, toy_data

    cfg = tiny_config(tmp_path / "run", "standard", train={"max_steps": 2}, checkpoint={"every": 2})
    Trainer(cfg, data=toy_data(cfg)).fit()
    assert convert("to-llama", tmp_path / "run", tmp_path / "llama") == 0
    ids = token_ids(256)
    exported = AutoModelForCausalLM.from_pretrained(export_run_dir(tmp_path / "run", tmp_path / "hf"),
                                                    trust_remote_code=True).eval()
    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    torch.testing.assert_close(logits(llama, ids), logits(exported, ids), atol=1e-5, rtol=0)


def _refused(capsys, out, *argv):
    assert convert(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
    return err


@pytest.mark.parametrize("field, value, named", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "linear"),
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}, "rope_parameters"),
    ("attention_bias", True, "attention_bias"),
    ("mlp_bias", True, "mlp_bias"),
    ("hidden_act", "gelu", "hidden_act"),
    ("sliding_window", 4096, "sliding_window"),  # not a Llama field: refused, not dropped
    ("architectures", ["LlamaForSequenceClassification"], "architectures"),
])
def test_from_llama_refuses_what_mhc_lm_cannot_represent(field, value, named, tmp_path, capsys):
    src = llama_folder(tmp_path / "llama", tokenizer=False)
    edit_config(src, **{field: value})
    err = _refused(capsys, tmp_path / "out", "from-llama", src, tmp_path / "out")
    assert named in err, err


@pytest.mark.parametrize("mode, extra", [("hc", {}), ("mhc", {}), ("grid", {"grid_size": 2})])
def test_to_llama_refuses_stream_and_grid_models(mode, extra, tmp_path, capsys):
    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM

    cfg = MhcLmConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=2, residual_mode=mode, n_streams=2, **extra)
    MhcLmForCausalLM(cfg).save_pretrained(tmp_path / "src")
    err = _refused(capsys, tmp_path / "out", "to-llama", tmp_path / "src", tmp_path / "out")
    assert f"residual_mode={mode!r}" in err, err


def test_conversions_refuse_a_bad_source_or_target(tmp_path, capsys):
    src = llama_folder(tmp_path / "llama", tokenizer=False)
    _refused(capsys, tmp_path / "out", "from-llama", tmp_path / "missing", tmp_path / "out")
    _refused(capsys, tmp_path / "out", "to-llama", src, tmp_path / "out")  # already Llama
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert convert("from-llama", src, tmp_path / "busy") == 2  # not an earlier export: never replaced
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert "not empty" in capsys.readouterr().err


def test_to_llama_refuses_qk_norm(tmp_path, capsys):
    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM

    cfg = MhcLmConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, qk_norm=True)
    MhcLmForCausalLM(cfg).save_pretrained(tmp_path / "src")
    capsys.readouterr()  # the save's own output
    err = _refused(capsys, tmp_path / "out", "to-llama", tmp_path / "src", tmp_path / "out")
    assert "qk_norm" in err, err


def test_a_full_disk_is_one_line_and_leaves_no_partial_folder(tmp_path, capsys, monkeypatch):
    import errno

    import safetensors.torch

    src = llama_folder(tmp_path / "llama", **CONFIGS["gqa-untied"])
    assert convert("from-llama", src, tmp_path / "mhc") == 0
    capsys.readouterr()

    def full_disk(tensors, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    err = _refused(capsys, tmp_path / "out", "to-llama", tmp_path / "mhc", tmp_path / "out")
    assert "no space left on device" in err.lower() and "model.safetensors" in err, err
