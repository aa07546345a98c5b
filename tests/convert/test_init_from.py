"""train.init_from: a run starts from a converted folder's weights with a fresh optimizer, records
it in meta.json, resumes bit for bit from its own checkpoints (not from the folder), and refuses a
run config whose architecture disagrees with the folder."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from mhc_lm.config_utils import ConfigError
from mhc_lm.train import Trainer, init_from
from mhc_lm.train.model_folder import load_safetensors
from mhc_lm.train.run_log import read_metrics
from tests.convert.helpers import convert, llama_folder
from tests.train.helpers import DieAt, Killed, one_thread, tiny_config, toy_data

REPO = Path(__file__).resolve().parents[2]
# the Llama matching tests/train/helpers.TINY_MODEL, so tiny_config's model fields agree with it
TINY_LLAMA = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64)


@pytest.fixture(scope="module")
def upcycled(tmp_path_factory):
    """A random tiny Llama, converted and upcycled to mhc with 2 streams."""
    root = tmp_path_factory.mktemp("init_from")
    llama_folder(root / "llama", **TINY_LLAMA)
    assert convert("upcycle", root / "llama", root / "mhc2", "--residual-mode", "mhc", "--n-streams", 2) == 0
    return root / "mhc2"


def config(run_dir, folder, **sections):
    sections.setdefault("model", {}).setdefault("sinkhorn_iters", 20)  # the upcycled folder's (TINY_MODEL has 5)
    return tiny_config(run_dir, "mhc", train={"init_from": str(folder), "max_steps": 4, "eval_every": 0,
                                              **sections.pop("train", {})},
                       checkpoint={"every": 2}, **sections)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


def test_run_starts_from_the_folder_weights_with_a_fresh_optimizer(upcycled, tmp_path):
    cfg = config(tmp_path / "run", upcycled)
    assert cfg.data.tokenizer == str(upcycled)  # the tokenizer comes from there too
    trainer = Trainer(cfg, data=toy_data(cfg))
    weights = load_safetensors(upcycled)
    state = trainer.unwrapped_model.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor.to(state[name].dtype)), name
    assert not trainer.optimizer.state  # no moments carried over
    assert trainer.scheduler.last_epoch == 0
    assert trainer.fit() == "completed"
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["init_from"]["path"] == str(upcycled.resolve()) and meta["init_from"]["kind"] == "mhc_lm"
    assert meta["init_from"]["weights_sha256"] == init_from.weights_sha256(weights)
    # the first logged loss is the folder's model's loss on the first batch (the weights are the ones trained)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(upcycled, trust_remote_code=True)
    batches = iter(toy_data(cfg).train_loader)
    with torch.no_grad():
        expected = sum(float(model(input_ids=b["input_ids"], shift_labels=b["labels"]).loss)
                       for b in (next(batches), next(batches))) / 2  # 2 micro-batches per step
    assert losses(tmp_path / "run")[0][1] == pytest.approx(expected, abs=1e-5)


def test_resume_is_bit_exact_and_does_not_reload_the_folder(upcycled, tmp_path, monkeypatch):
    with one_thread():
        ref = config(tmp_path / "ref", upcycled)
        Trainer(ref, data=toy_data(ref)).fit()
        cfg = config(tmp_path / "run", upcycled)
        with pytest.raises(Killed):
            Trainer(cfg, data=toy_data(cfg), callbacks=[DieAt(3)]).fit()  # checkpoint at step 2, killed at 3

        def no_reload(*args, **kwargs):
            raise AssertionError("resume loaded the init_from weights")

        monkeypatch.setattr(init_from, "load_weights", no_reload)
        trainer = Trainer(cfg, data=toy_data(cfg))
        assert trainer.fit() == "completed"
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    ref_w = load_safetensors(tmp_path / "ref" / "checkpoints" / "step_0000004")
    run_w = load_safetensors(tmp_path / "run" / "checkpoints" / "step_0000004")
    assert ref_w.keys() == run_w.keys() and all(torch.equal(ref_w[k], run_w[k]) for k in ref_w)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["init_from"]["path"] == str(upcycled.resolve())  # the first start's record is kept


def test_architecture_mismatch_names_the_field(upcycled, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.hidden_size=48 .* 32"):
        config(tmp_path / "run", upcycled, model={"hidden_size": 48})
    with pytest.raises(ConfigError, match=r"model\.n_streams=4 .* 2"):
        config(tmp_path / "run", upcycled, model={"n_streams": 4})
    other = llama_folder(tmp_path / "other_tok", vocab_size=300, tokenizer=True, **{k: v for k, v in TINY_LLAMA.items()
                                                                                 if k != "vocab_size"})
    with pytest.raises(ConfigError, match=r"data\.tokenizer=.* is not the tokenizer of train\.init_from"):
        config(tmp_path / "run", upcycled, data={"tokenizer": str(other)})
    same = tmp_path / "same_tok"  # the same tokenizer files elsewhere (e.g. one data preparation for several folders)
    same.mkdir()
    shutil.copy2(upcycled / "tokenizer.json", same / "tokenizer.json")
    shutil.copy2(upcycled / "tokenizer_config.json", same / "tokenizer_config.json")
    assert config(tmp_path / "run", upcycled, data={"tokenizer": str(same)}).data.tokenizer == str(same)
    # fields that do not change the architecture may differ
    cfg = config(tmp_path / "run", upcycled, model={"max_position_embeddings": 32, "mhc_gate_init": 0.1})
    assert init_from.model_config(cfg).max_position_embeddings == 32


def test_a_run_directory_starts_a_run_from_its_latest_checkpoint(upcycled, tmp_path):
    """train.init_from=RUN_DIR: the architecture comes from the run's config.yaml (read while the run
    config is built) and the weights from its latest checkpoint."""
    first = config(tmp_path / "first", upcycled, train={"max_steps": 2})
    Trainer(first, data=toy_data(first)).fit()
    with pytest.raises(ConfigError, match=r"model\.n_streams=4 .* 2"):
        config(tmp_path / "run", tmp_path / "first", model={"n_streams": 4})
    cfg = config(tmp_path / "run", tmp_path / "first")
    assert init_from.model_config(cfg).to_dict() == init_from.model_config(first).to_dict()
    trainer = Trainer(cfg, data=toy_data(cfg))
    weights = load_safetensors(tmp_path / "first" / "checkpoints" / "step_0000002")
    state = trainer.unwrapped_model.state_dict()
    assert weights and all(torch.equal(state[k], w.to(state[k].dtype)) for k, w in weights.items())
    assert trainer.init_from["kind"] == "run" and trainer.init_from["weights_sha256"] == init_from.weights_sha256(weights)


def test_pretrain_cli_exit_2_on_a_mismatch(upcycled, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pretrain_cli", REPO / "launch" / "pretrain.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    run_dir = tmp_path / "run"
    code = cli.main(["--config", str(REPO / "configs" / "tiny_cpu.yaml"), f"train.init_from={upcycled}",
                     f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model.residual_mode='standard'" in err, err
    assert not run_dir.exists()


def test_the_folder_tokenizer_loads_without_a_remote_code_prompt(upcycled, capfd):
    """data.tokenizer = a model folder whose config.json maps AutoConfig to remote code: the data
    preparation loads its tokenizer without asking whether to run that code."""
    from mhc_lm.data.tokenizer import load_tokenizer_by_name

    tok = load_tokenizer_by_name(str(upcycled))
    assert len(tok) == 256 and tok.eos_token == "</s>"
    captured = capfd.readouterr()
    assert "custom code" not in captured.out + captured.err
