"""Faults end in the documented exit codes: divergence found anywhere (the probe included) is
exit 3 with DIVERGED; a full disk or a read-only run directory is exit 2 with one line naming
the path and the last complete checkpoint, leaves no partial files, and a rerun after the space
is freed resumes bit-exactly."""

import errno
import json

import pytest

from mhc_lm.train import Trainer, TrainingDiverged
from mhc_lm.train import checkpoint as ckpt_lib
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import tiny_config, toy_data


def run(cfg):
    return Trainer(cfg, data=toy_data(cfg)).fit()


def test_non_finite_values_in_the_probe_are_a_divergence(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, "mhc", train={"max_steps": 4, "grad_clip": 0.0}, optim={"lr": 1e6, "warmup_steps": 0},
                      metrics={"enabled": True, "probe_every": 1}, checkpoint={"every": 0, "save_at_end": False})
    from mhc_lm.metrics import build_callbacks

    with pytest.raises(TrainingDiverged, match="non-finite values in the stability probe at step 1"):
        Trainer(cfg, data=toy_data(cfg), callbacks=build_callbacks(cfg)).fit()
    assert "non-finite" in (run_dir / "DIVERGED").read_text()
    assert not ckpt_lib.complete_checkpoints(run_dir)


def full_disk_after(monkeypatch, calls: int, exc=None):
    """accelerate's torch.save wrapper (the optimizer state) writes half a file and fails with
    ENOSPC from its `calls`-th call on, as on a full disk."""
    import accelerate.checkpointing as acc_ckpt

    real, count = acc_ckpt.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        count["n"] += 1
        if count["n"] < calls:
            return real(obj, f, *args, **kwargs)
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04partial")
        raise exc or OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(acc_ckpt, "save", save)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("exc", ["oserror", "torch_short_write"])
def test_a_full_disk_during_a_checkpoint_is_one_clear_error_and_the_rerun_resumes_bit_exactly(
        tmp_path, monkeypatch, exc):
    from mhc_lm.train import faults

    ref = tmp_path / "ref"
    kw = dict(train={"max_steps": 12}, checkpoint={"every": 4, "keep_last": 3})
    run(tiny_config(ref, **kw))
    run_dir = tmp_path / "run"
    if exc == "torch_short_write":  # torch's zip writer drops the errno; the disk is then (nearly) full
        monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
        error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1216 vs 1110")
    else:
        error = None
    full_disk_after(monkeypatch, calls=3, exc=error)  # 2 files per checkpoint: step 4 fits, step 8 not
    with pytest.raises(faults.WriteFault) as err:
        run(tiny_config(run_dir, **kw))
    msg = err.value.strerror
    assert msg.startswith("no space left on device: writing ") and "\n" not in msg
    assert "step_0000008" in msg and "last complete checkpoint: " in msg and msg.count("step_0000004") == 1
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # the partial checkpoint is gone
    assert [p.name for p in ckpt_lib.complete_checkpoints(run_dir)] == ["step_0000004"]
    monkeypatch.undo()  # space freed: the same command resumes
    run(tiny_config(run_dir, **kw))
    assert losses(run_dir) == losses(ref)


def test_a_full_disk_on_the_metrics_log_is_one_clear_error(tmp_path, monkeypatch):
    from mhc_lm.train import faults
    from mhc_lm.train import run_log

    real = run_log.MetricsWriter.write

    def write(self, record):
        if record.get("step") == 6:
            self._fh = self._fh or open(self.path, "a")
            self._fh.close()
            self._fh = open("/dev/full", "w")  # every flush fails with ENOSPC
        return real(self, record)

    monkeypatch.setattr(run_log.MetricsWriter, "write", write)
    run_dir = tmp_path / "run"
    with pytest.raises(faults.WriteFault) as err:
        run(tiny_config(run_dir, train={"max_steps": 8}, checkpoint={"every": 4}))
    assert err.value.strerror.startswith(f"no space left on device: writing {run_dir / 'metrics.jsonl'}")
    assert "step_0000004" in err.value.strerror


def test_pretrain_turns_a_write_error_into_exit_2_and_one_line(tmp_path, monkeypatch, capsys):
    import launch.pretrain as pretrain

    class Boom:
        def __init__(self, config, **kwargs):
            pass

        def fit(self):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr("mhc_lm.train.Trainer", Boom)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\n")
    assert pretrain.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: read-only file system: writing ") and "config.yaml" in err[0]


def test_a_full_disk_during_an_export_removes_the_partial_folder(tmp_path, monkeypatch, capsys):
    from launch.export_hf import main
    from mhc_lm.model import MhcLmForCausalLM

    run_dir = tmp_path / "run"
    run(tiny_config(run_dir, train={"max_steps": 4}, checkpoint={"every": 4}))
    real = MhcLmForCausalLM.save_pretrained

    def save_pretrained(self, folder, *args, **kwargs):
        real(self, folder, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder) + "/model.safetensors")

    monkeypatch.setattr(MhcLmForCausalLM, "save_pretrained", save_pretrained)
    assert main([str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on device: writing ") and "model.safetensors" in err[0]
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf.tmp").exists()


def test_a_full_disk_during_data_preparation_is_exit_2_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    from mhc_lm.data import prepare as prepare_module
    from tests.data.conftest import synthetic_docs, write_txt

    write_txt(tmp_path / "txt", synthetic_docs(12))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "train_00000.bin"))

    monkeypatch.setattr(prepare_module, "_write_split", full)
    spec = importlib.util.spec_from_file_location(
        "prepare_cli", Path(__file__).resolve().parents[2] / "launch" / "prepare_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rc = cli.main(["--quiet", f"data.train_files={tmp_path}/txt/*.txt", f"data.out_dir={tmp_path}/out",
                   "data.vocab_size=400", "data.num_proc=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: no space left on device: writing ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["txt"]  # the staging folder is gone


def test_library_errors_that_quote_the_os_error_are_write_faults(tmp_path):
    from mhc_lm.train.faults import write_fault

    class SafetensorError(Exception):
        pass

    err = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                          '"No space left on device" })')
    fault = write_fault(err, tmp_path / "model.safetensors", tmp_path)
    assert fault.strerror.startswith(f"no space left on device: writing {tmp_path / 'model.safetensors'} failed")
    assert write_fault(RuntimeError("shape mismatch"), tmp_path / "x", tmp_path) is None  # a bug stays a bug
    # torch's zip writer drops the errno: a short write counts only when the disk is (nearly) full
    assert write_fault(RuntimeError("unexpected pos 1216 vs 1110"), tmp_path / "x", tmp_path) is None
