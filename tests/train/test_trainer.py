"""In-process runs of the tiny model: metrics contract, run dir, callbacks, crash during a
checkpoint write, NaN stop, export."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from mhc_lm.config_utils import save_config
from mhc_lm.run_dir import RunDir
from mhc_lm.train import BaseCallback, Trainer, TrainingDiverged
from mhc_lm.train import checkpoint as ckpt_lib
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import DieAt, Killed, tiny_config, toy_data


def run(cfg, callbacks=None):
    trainer = Trainer(cfg, data=toy_data(cfg), callbacks=callbacks)
    return trainer, trainer.fit()


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


class Recorder(BaseCallback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        assert trainer.probe_batch["input_ids"].shape == (2, 16)
        self.events.append("begin")

    def on_step_end(self, trainer, step, logs):
        self.events.append(step)
        logs["probe_value"] = float(step) / 2

    def on_train_end(self, trainer):
        self.events.append("end")


def test_run_dir_metrics_and_callbacks(tmp_path):
    cfg = tiny_config(tmp_path / "run", "mhc", train={"max_steps": 24, "eval_every": 12})
    rec = Recorder()
    trainer, status = run(cfg, [rec])
    assert status == "completed" and trainer.step == 24
    assert rec.events == ["begin", *range(1, 25), "end"]
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "meta.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    import json

    meta = json.loads((run_dir / "meta.json").read_text())
    assert len(meta["git"]["commit"]) == 40 and meta["versions"]["torch"] and meta["command"]
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 25))
    for r in train:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens", "probe_value"} <= set(r)
    assert train[-1]["tokens"] == 24 * 4 * 16
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [12, 24]
    assert val[-1]["val_loss"] < val[0]["val_loss"] < 5.6, "the toy pattern is learnable"
    assert [p.name for p in ckpt_lib.complete_checkpoints(run_dir)] == ["step_0000020", "step_0000024"]  # keep_last=2


def test_crash_during_checkpoint_write_resumes_from_previous(tmp_path, monkeypatch):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    run(tiny_config(ref_dir, "hc"))
    real_save = ckpt_lib.save_checkpoint

    def dying_save(accelerator, rd, step, *args, **kwargs):
        def hook(tmp):  # model/optimizer/RNG files are on disk, trainer_state.json is not
            assert any(tmp.iterdir())
            raise Killed
        kwargs["_fault_hook"] = hook if step == 8 else None
        return real_save(accelerator, rd, step, *args, **kwargs)

    monkeypatch.setattr(ckpt_lib, "save_checkpoint", dying_save)
    with pytest.raises(Killed):
        run(tiny_config(run_dir, "hc"))
    monkeypatch.setattr(ckpt_lib, "save_checkpoint", real_save)
    assert (run_dir / "checkpoints" / "step_0000008.tmp").is_dir()
    assert [p.name for p in ckpt_lib.complete_checkpoints(run_dir)] == ["step_0000004"]

    trainer, status = run(tiny_config(run_dir, "hc"))  # checkpoint.resume=auto
    assert status == "completed"
    assert losses(run_dir) == losses(ref_dir), "resumed run equals the uninterrupted one bit for bit"
    assert not (run_dir / "checkpoints" / "step_0000008.tmp").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", "standard", train={"max_steps": 8})

    class Poison(BaseCallback):
        def on_train_begin(self, trainer):
            head = trainer.unwrapped_model.lm_head
            head.register_forward_hook(lambda m, i, out: out * float("nan") if trainer.step >= 5 else out)

    trainer = Trainer(cfg, data=toy_data(cfg), callbacks=[Poison()])
    with pytest.raises(TrainingDiverged, match=r"step 6.*step_0000004"):
        trainer.fit()
    ckpts = ckpt_lib.complete_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["step_0000004"]
    from safetensors.torch import load_file

    weights = load_file(str(ckpts[0] / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    record = RunDir(tmp_path / "run").divergence()  # the DIVERGED record, machine-readable
    assert (record.step, record.reason, math.isnan(record.loss)) == (6, "loss", True)
    assert record.last_checkpoint == str(ckpts[0]) and "step 6" in record.message
    assert json.loads((tmp_path / "run" / "DIVERGED").read_text())["step"] == 6
    assert max(s for s, _ in losses(tmp_path / "run")) == 5


def test_vocab_smaller_than_data_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path / "run", model={"vocab_size": 100})
    with pytest.raises(ValueError, match=r"model.vocab_size=100 .* set model.vocab_size=256"):
        Trainer(cfg, data=toy_data(cfg))


def test_export_loads_with_auto_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from mhc_lm.train.export import export_run_dir

    cfg = tiny_config(tmp_path / "run", "mhc", train={"export_hf": True, "max_steps": 4})
    trainer, _ = run(cfg)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainer.unwrapped_model(ids).logits
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf", trust_remote_code=True)
        torch.testing.assert_close(loaded(ids).logits, expected)
        out = export_run_dir(tmp_path / "run", tmp_path / "hf2")  # launch/export_hf.py path
        again = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        torch.testing.assert_close(again(ids).logits, expected)
        # the run directory itself loads too (the export is published at its top, as HF Trainer does)
        top = AutoModelForCausalLM.from_pretrained(tmp_path / "run", trust_remote_code=True)
        torch.testing.assert_close(top(ids).logits, expected)
    assert loaded.config.residual_mode == "mhc"
    assert (tmp_path / "run" / "model.safetensors").stat().st_ino == (tmp_path / "run" / "hf" / "model.safetensors").stat().st_ino


def test_publish_in_run_dir_replaces_its_own_files_only(tmp_path):
    from mhc_lm.train.export import publish_in_run_dir

    run, hf = tmp_path / "run", tmp_path / "run" / "hf"
    hf.mkdir(parents=True)
    (run / "config.yaml").write_text("run config")
    for name in ("config.json", "model.safetensors", "extra.py", "config.yaml"):
        (hf / name).write_text(name)
    with pytest.warns(UserWarning, match="config.yaml"):
        assert publish_in_run_dir(run, hf) == ["config.json", "extra.py", "model.safetensors"]
    assert (run / "config.yaml").read_text() == "run config" and (run / "extra.py").read_text() == "extra.py"
    (hf / "extra.py").unlink()
    (hf / "config.yaml").unlink()
    (hf / "config.json").write_text("new")
    publish_in_run_dir(run, hf)
    assert not (run / "extra.py").exists() and (run / "config.json").read_text() == "new"
    assert (run / "config.yaml").read_text() == "run config"


def test_export_cli_errors_name_the_problem(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_hf", Path(__file__).resolve().parents[2] / "launch" / "export_hf.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    cfg = tiny_config(tmp_path / "run", "standard")
    (tmp_path / "run").mkdir()
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2  # no checkpoint yet
    assert "no complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_activation_checkpointing_keeps_the_losses(tmp_path):
    run(tiny_config(tmp_path / "plain", "mhc", train={"max_steps": 4}))
    trainer, _ = run(tiny_config(tmp_path / "ckpt", "mhc", train={"max_steps": 4, "activation_checkpointing": True}))
    assert trainer.unwrapped_model.is_activation_checkpointing
    got, want = losses(tmp_path / "ckpt"), losses(tmp_path / "plain")
    torch.testing.assert_close(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]), rtol=1e-5, atol=0)


def test_bf16_autocast_keeps_fp32_parameters_and_tensorboard(tmp_path):
    cfg = tiny_config(tmp_path / "run", "mhc", train={"max_steps": 3, "mixed_precision": "bf16"},
                      logging={"trackers": ["tensorboard"]})
    trainer, status = run(cfg)
    assert status == "completed"
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped_model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for _, v in losses(tmp_path / "run"))
    assert list((tmp_path / "run").rglob("events.out.tfevents*")), "tensorboard tracker wrote nothing"


@pytest.mark.slow
def test_compile_keeps_the_losses(tmp_path):
    run(tiny_config(tmp_path / "plain", "standard", train={"max_steps": 3}))
    run(tiny_config(tmp_path / "compiled", "standard", train={"max_steps": 3, "compile": True}))
    got, want = losses(tmp_path / "compiled"), losses(tmp_path / "plain")
    torch.testing.assert_close(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]), rtol=1e-4, atol=0)


def test_the_trainer_runs_the_callbacks_it_is_handed_and_pretrain_hands_the_metrics(tmp_path, monkeypatch):
    """The trainer imports no metrics: with metrics enabled it still runs only what it is given;
    launch/pretrain.py hands it mhc_lm.metrics.build_callbacks(config)."""
    import importlib.util

    import mhc_lm.train
    from mhc_lm.metrics import build_callbacks

    cfg = tiny_config(tmp_path / "on", metrics={"enabled": True}, train={"max_steps": 2})
    assert Trainer(cfg, data=toy_data(cfg)).callbacks == []
    rec = Recorder()
    assert Trainer(cfg, data=toy_data(cfg), callbacks=[rec]).callbacks == [rec]

    handed = []

    class FakeTrainer:
        def __init__(self, config, callbacks=None):
            handed.append((config, callbacks))

        def fit(self):
            return "completed"

    monkeypatch.setattr(mhc_lm.train, "Trainer", FakeTrainer)
    spec = importlib.util.spec_from_file_location("pretrain", Path(__file__).resolve().parents[2] / "launch" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    config_file = tmp_path / "run.yaml"
    save_config(cfg, config_file)
    assert pretrain.main(["--config", str(config_file)]) == 0
    [(config, callbacks)] = handed
    assert [type(c) for c in callbacks] == [type(c) for c in build_callbacks(config)] and len(callbacks) == 3


def test_resume_refuses_other_settings_and_keeps_the_run_records(tmp_path):
    from mhc_lm.config_utils import ConfigError

    run_dir = tmp_path / "run"
    run(tiny_config(run_dir, "mhc", train={"max_steps": 4}))
    before = (run_dir / "config.yaml").read_text()
    bad = [({"model": {"hidden_size": 48}}, "model.hidden_size: 32 -> 48"),
           ({"optim": {"lr": 1e-2}}, "optim.lr: 0.003 -> 0.01"),
           ({"train": {"max_steps": 8, "batch_size": 8}}, "train.batch_size: 4 -> 8")]
    for sections, named in bad:
        cfg = tiny_config(run_dir, "mhc", **{k: {**({"max_steps": 8} if k == "train" else {}), **v}
                                            for k, v in sections.items()})
        with pytest.raises(ConfigError, match=re.escape(named)):
            Trainer(cfg, data=toy_data(cfg)).fit()
        assert (run_dir / "config.yaml").read_text() == before  # nothing of the old run was overwritten
    with pytest.raises(ConfigError, match=r"residual_mode: 'mhc' -> 'hc'"):
        cfg = tiny_config(run_dir, "hc", train={"max_steps": 8})
        Trainer(cfg, data=toy_data(cfg)).fit()
    # a longer run is fine: it resumes at step 4
    trainer, status = run(tiny_config(run_dir, "mhc", train={"max_steps": 6}))
    assert status == "completed" and [s for s, _ in losses(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_resume_none_refuses_a_used_run_dir(tmp_path):
    from mhc_lm.config_utils import ConfigError

    run_dir = tmp_path / "run"
    run(tiny_config(run_dir, "standard", train={"max_steps": 4}))
    ckpts = [p.name for p in ckpt_lib.complete_checkpoints(run_dir)]
    with pytest.raises(ConfigError, match="already holds a run"):
        run(tiny_config(run_dir, "standard", train={"max_steps": 4}, checkpoint={"resume": "none"}))
    assert [p.name for p in ckpt_lib.complete_checkpoints(run_dir)] == ckpts
    run(tiny_config(tmp_path / "fresh", "standard", train={"max_steps": 2}, checkpoint={"resume": "none"}))


def test_restart_before_the_first_checkpoint_starts_the_log_over(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, "standard", train={"max_steps": 6}, checkpoint={"every": 5})
    with pytest.raises(Killed):
        run(cfg, callbacks=[DieAt(3)])
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "lo')  # a line torn by the kill
    (run_dir / "DIVERGED").write_text("an earlier attempt\n")
    run(cfg)
    assert [s for s, _ in losses(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert not (run_dir / "DIVERGED").exists()


def test_fp16_overflows_are_skipped_until_too_many_in_a_row():
    from types import SimpleNamespace

    from mhc_lm.train.trainer import MAX_FP16_OVERFLOWS

    def fake(precision):
        def diverged(loss, gn):
            raise TrainingDiverged(f"{loss} {gn}")
        return SimpleNamespace(accelerator=SimpleNamespace(mixed_precision=precision), _fp16_overflows=0,
                               _diverged=diverged)

    check = Trainer._check_finite
    t = fake("fp16")
    for _ in range(MAX_FP16_OVERFLOWS - 1):
        check(t, 1.0, float("inf"), True)  # loss-scale overflow: the scaler skips the step
    check(t, 1.0, 2.0, True)  # a good step resets the count
    assert t._fp16_overflows == 0
    for _ in range(MAX_FP16_OVERFLOWS - 1):
        check(t, 1.0, float("inf"), True)
    with pytest.raises(TrainingDiverged):
        check(t, 1.0, float("inf"), True)
    with pytest.raises(TrainingDiverged):
        check(fake("fp16"), float("nan"), 1.0, True)  # a NaN loss is never an overflow
    with pytest.raises(TrainingDiverged):
        check(fake("bf16"), 1.0, float("nan"), True)  # bf16 / fp32: the first non-finite norm stops
    check(fake("bf16"), 1.0, float("nan"), False)  # no norm reported (DeepSpeed without an engine norm)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_export_reads_an_fsdp_sharded_checkpoint(tmp_path):
    """Accelerate's FSDP SHARDED_STATE_DICT layout (pytorch_model_fsdp_0/, a torch.distributed.checkpoint
    of {"model": state_dict}), written here in one process since FSDP cannot run on CPU."""
    import torch.distributed.checkpoint as dist_cp
    from transformers import AutoModelForCausalLM

    from mhc_lm.train.export import export_run_dir

    trainer, _ = run(tiny_config(tmp_path / "run", "mhc", train={"max_steps": 4}))
    ckpt = ckpt_lib.complete_checkpoints(tmp_path / "run")[-1]
    state = {k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()}
    (ckpt / "model.safetensors").unlink()
    dist_cp.save(state_dict={"model": state}, storage_writer=dist_cp.FileSystemWriter(str(ckpt / "pytorch_model_fsdp_0")))
    out = export_run_dir(tmp_path / "run", tmp_path / "hf_fsdp")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)(ids).logits
        torch.testing.assert_close(got, trainer.unwrapped_model(ids).logits)


def test_tensorboard_events_after_the_resumed_step_are_dropped(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path / "run", "standard", train={"max_steps": 8}, logging={"trackers": ["tensorboard"]})
    with pytest.raises(Killed):
        run(cfg, callbacks=[DieAt(6, log=True)])  # step 6 reaches the trackers, then dies
    run(cfg)  # resumes at the step-4 checkpoint
    logdir = tmp_path / "run" / cfg.logging.project  # both runs' scalar event files (hparams go to subfolders)
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss")]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8], steps


def test_metrics_jsonl_round_trip_with_non_finite_values_and_a_torn_line(tmp_path):
    from mhc_lm.train.run_log import MetricsWriter, iter_jsonl

    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path, enabled=True)
    for step, loss in [(1, 2.5), (2, float("nan")), (3, float("inf")), (4, 1.5)]:
        writer.write({"step": step, "loss": loss, "note": "nan"})
    writer.close()
    with path.open("a") as fh:
        fh.write('{"step": 5, "lo')  # torn by a kill mid-write
    bad = []
    records = read_metrics(path, on_bad=lambda i, line: bad.append(i))
    assert [r["step"] for r in records] == [1, 2, 3, 4] and bad == [5]
    assert math.isnan(records[1]["loss"]) and records[2]["loss"] == float("inf") and records[3]["loss"] == 1.5
    assert [line for line, _ in iter_jsonl(path)][0].startswith('{"step": 1')  # raw lines kept for rewrites
    MetricsWriter(path, enabled=True).truncate_after(2)  # resume at step 2: later lines and the torn one go
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
