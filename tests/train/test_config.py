"""Every shipped YAML loads; typos and bad values fail naming the key; the saved config round-trips."""

import json
from pathlib import Path

import pytest
import yaml

from mhc_lm.config_utils import ConfigError
from mhc_lm.train.config import ModelSection, RunConfig, build_model_config, load_run_config, resolved, save_config

REPO = Path(__file__).resolve().parents[2]
RUN_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
MODEL_PRESETS = sorted((REPO / "configs" / "model").glob("*.yaml"))
ACCELERATE = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def test_the_expected_configs_exist():
    names = {p.name for p in RUN_CONFIGS}
    assert {"tiny_cpu.yaml", "standard_1b.yaml", "hc_1b.yaml", "mhc_1b.yaml", "grid_1b.yaml"} <= names
    assert {p.name for p in (REPO / "configs" / "deepspeed").glob("*.json")} >= {"zero1.json", "zero2.json", "zero3.json"}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_loads(path):
    cfg = load_run_config(path)
    mc = build_model_config(cfg.model)
    assert mc.max_position_embeddings >= cfg.data.seq_len
    if path.name.endswith("_1b.yaml"):
        assert mc.residual_mode == path.name.split("_")[0]
        tokens = cfg.train.batch_size * cfg.data.seq_len
        assert 0.5e6 <= tokens <= 1.1e6, "1B configs use a global batch of ~0.5-1M tokens"
        assert cfg.train.mixed_precision == "bf16" and cfg.optim.warmup_steps > 0
        assert mc.vocab_size >= cfg.data.vocab_size


@pytest.mark.parametrize("path", MODEL_PRESETS, ids=lambda p: p.name)
def test_model_preset_loads(path):
    cfg = build_model_config(ModelSection(preset=str(path)))
    assert cfg.residual_mode in ("standard", "hc", "mhc", "grid")


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_is_complete(path):
    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED")
    assert data["num_processes"] >= 1 and data["num_machines"] >= 1
    if data["distributed_type"] == "DEEPSPEED":
        ds_file = REPO / data["deepspeed_config"]["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        assert "optimizer" not in ds and "scheduler" not in ds, "the trainer owns optimizer and scheduler"


def test_override_beats_file_and_preset():
    cfg = load_run_config(REPO / "configs/tiny_cpu.yaml", ["train.max_steps=7", "model.residual_mode=mhc",
                                                           "model.n_streams=2"])
    mc = build_model_config(cfg.model)
    assert (cfg.train.max_steps, mc.residual_mode, mc.n_streams) == (7, "mhc", 2)


@pytest.mark.parametrize("override, names", [
    (["train.max_stepz=3"], ["train.max_stepz", "max_steps"]),
    (["optim.schedul=wsd"], ["optim.schedul", "schedule"]),
    (["model.residual_mode=resnet"], ["model.residual_mode", "mhc"]),
    (["optim.schedule=linear"], ["optim.schedule", "wsd"]),
    (["train.max_steps=many"], ["train.max_steps", "integer"]),
    (["trian.max_steps=3"], ["trian", "train"]),
    (["train.batch_size=10", "train.micro_batch_size=4"], ["train.batch_size", "micro_batch_size"]),
])
def test_bad_override_names_the_key(override, names):
    with pytest.raises(ConfigError) as err:
        load_run_config(REPO / "configs/tiny_cpu.yaml", override)
    for name in names:
        assert name in str(err.value)


def test_float_fields_accept_yaml11_exponents(tmp_path):
    # PyYAML (YAML 1.1) reads `3e-4` as the string "3e-4"; a float field must still take it.
    cfg_file = tmp_path / "lr.yaml"
    cfg_file.write_text("optim:\n  lr: 3e-4\n")
    assert load_run_config(cfg_file).optim.lr == pytest.approx(3e-4)
    cfg = load_run_config(REPO / "configs/tiny_cpu.yaml", ["optim.lr=2e-3"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == pytest.approx(2e-3)
    with pytest.raises(ConfigError, match=r"optim\.lr.*number"):
        load_run_config(REPO / "configs/tiny_cpu.yaml", ["optim.lr=fast"])


def test_typo_in_file_and_in_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"train\.max_step\b.*max_steps"):
        load_run_config(bad)
    preset = tmp_path / "preset.yaml"
    preset.write_text("hidden_size: 64\nnum_hiden_layers: 2\n")
    with pytest.raises(ConfigError, match="num_hiden_layers"):
        load_run_config(None, [f"model.preset={preset}"])
    with pytest.raises(ConfigError, match="model.preset.*not found"):
        load_run_config(None, ["model.preset=configs/model/nope.yaml"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_run_config(REPO / "configs/tiny_cpu.yaml", ["model.residual_mode=grid"])
    save_config(resolved(cfg), tmp_path / "config.yaml")
    again = load_run_config(tmp_path / "config.yaml")
    assert isinstance(again, RunConfig)
    assert build_model_config(again.model).to_dict() == build_model_config(cfg.model).to_dict()
    assert again.train == cfg.train and again.data == cfg.data


def test_pretrain_cli_rejects_a_typo(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain", REPO / "launch" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    assert pretrain.main(["--config", str(REPO / "configs/tiny_cpu.yaml"), "optim.lr_max=1"]) == 2
    assert "optim.lr_max" in capsys.readouterr().err


@pytest.mark.parametrize("override, match", [
    ("optim.lr=-1", r"optim\.lr: must be a finite number > 0"),
    ("optim.lr=nan", r"optim\.lr: must be a finite number > 0"),
    ("optim.beta2=1.0", r"optim\.beta2: must be in \[0, 1\)"),
    ("train.grad_clip=-1", r"train\.grad_clip: must be >= 0"),
    ("logging.log_every=0", r"logging\.log_every: must be >= 1"),
    ("train.eval_batches=0", r"train\.eval_batches: must be >= 1"),
    ("logging.trackers=[tensorbord]", r"logging\.trackers: unknown \['tensorbord'\].*tensorboard"),
    ("model.num_attention_heads=5", r"model: num_attention_heads \(5\) must divide hidden_size"),
    ("data.seq_len=100000", r"data\.seq_len=100000 exceeds model\.max_position_embeddings=512"),
])
def test_bad_values_are_config_errors_at_load_time(override, match):
    # found by load_run_config, so launch/pretrain.py exits 2 with one line instead of a traceback mid-run
    with pytest.raises(ConfigError, match=match):
        load_run_config(REPO / "configs/tiny_cpu.yaml", [override])


def test_pretrain_cli_exits_2_on_errors_found_after_start(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_cli", REPO / "launch" / "pretrain.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    code = cli.main(["--config", str(REPO / "configs/tiny_cpu.yaml"), f"run_dir={tmp_path / 'run'}",
                     "--resume", str(tmp_path / "no_such_checkpoint")])
    assert code == 2
    assert "checkpoint.resume=" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written


def test_yaml_no_is_the_string_no_for_choice_fields():
    # YAML 1.1 reads `no` as false; `train.mixed_precision=no` must still mean "no"
    assert load_run_config(REPO / "configs/tiny_cpu.yaml", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_run_config(REPO / "configs/tiny_cpu.yaml", ["train.mixed_precision=yes"])


def test_fp16_on_cpu_and_batch_layout_errors_are_config_errors(monkeypatch):
    from mhc_lm.train import distributed

    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    cfg = load_run_config(REPO / "configs/tiny_cpu.yaml", ["train.mixed_precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        distributed.build_accelerator(cfg)
    cfg = load_run_config(REPO / "configs/tiny_cpu.yaml", ["train.batch_size=6", "train.micro_batch_size=2"])
    with pytest.raises(ConfigError, match="not a multiple of train.micro_batch_size=2 x 2 processes"):
        distributed.accumulation_steps(cfg, world_size=2)
