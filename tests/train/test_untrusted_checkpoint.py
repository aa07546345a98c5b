"""A checkpoint is untrusted input: a crafted pickle in any of its files runs no code, on resume
or on export, and the run refuses it naming the file; its metadata is validated before use and
nothing in the run directory changes before every check has passed."""

import json
import os
import shutil

import pytest
import torch

from mhc_lm.config_utils import ConfigError
from mhc_lm.train import Trainer
from mhc_lm.train import checkpoint as ckpt_lib
from mhc_lm.train.safe_pickle import UnsafePickleError, scan_file
from tests.train.helpers import tiny_config, toy_data


class Evil:
    """Unpickling it runs a shell command that creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def run(cfg):
    return Trainer(cfg, data=toy_data(cfg)).fit()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 8-step run with checkpoints at 4 and 8 (copied per test)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run(tiny_config(run_dir, train={"max_steps": 8}, checkpoint={"every": 4, "keep_last": 3}))
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def test_no_checkpoint_file_is_a_pickle_of_anything_but_data(trained):
    latest = ckpt_lib.latest_checkpoint(trained)
    names = sorted(p.name for p in latest.iterdir())
    assert "custom_checkpoint_0.pkl" not in names  # the scheduler is in trainer_state.json
    state = json.loads((latest / ckpt_lib.STATE_FILE).read_text())
    assert state["scheduler"]["last_epoch"] == 8 and state["settings"]["optim"]["lr"] == 3e-3
    for p in latest.iterdir():
        scan_file(p)  # passes


@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
                                    "extra.pt"])
def test_a_crafted_pickle_runs_no_code_on_resume(run_dir, tmp_path, victim):
    marker = tmp_path / "PWNED"
    latest = ckpt_lib.latest_checkpoint(run_dir)
    torch.save({"s": Evil(marker)}, latest / victim)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=f"{victim}.*would import posix.system") as err:
        run(tiny_config(run_dir, train={"max_steps": 12}, checkpoint={"every": 4, "keep_last": 3}))
    assert "\n" not in str(err.value)
    assert not marker.exists()
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # config.yaml, meta.json, metrics.jsonl untouched


def test_a_crafted_pickle_runs_no_code_on_export(run_dir, tmp_path, capsys):
    from launch.export_hf import main

    marker = tmp_path / "PWNED"
    latest = ckpt_lib.latest_checkpoint(run_dir)
    torch.save({"s": Evil(marker)}, latest / "optimizer.bin")
    assert main([str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "optimizer.bin" in err and "posix.system" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_deepspeed_files_are_scanned_before_they_are_read(tmp_path):
    from mhc_lm.train.ds_checkpoint import is_bf16_optimizer_checkpoint

    marker = tmp_path / "PWNED"
    ds = tmp_path / "pytorch_model"
    ds.mkdir()
    torch.save({"optimizer_state_dict": Evil(marker)}, ds / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        is_bf16_optimizer_checkpoint(ds)
    assert not marker.exists()


def test_a_checkpoint_with_the_scheduler_as_a_pickle_is_refused_not_unpickled(run_dir, tmp_path):
    """Checkpoints written before the scheduler moved to trainer_state.json: Accelerate would load
    their custom_checkpoint_0.pkl with weights_only=False. Refused, as intact, with the way out."""
    marker = tmp_path / "PWNED"
    latest = ckpt_lib.latest_checkpoint(run_dir)
    state = json.loads((latest / ckpt_lib.STATE_FILE).read_text())
    torch.save({"s": Evil(marker)}, latest / "custom_checkpoint_0.pkl")
    del state["scheduler"]
    (latest / ckpt_lib.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="older mhc-lm that pickled the LR scheduler") as err:
        run(tiny_config(run_dir, train={"max_steps": 12}, checkpoint={"every": 4, "keep_last": 3}))
    assert "It is intact" in str(err.value) and "delete" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("edit", ["drop_tokens", "drop_loader_states", "step", "rng_missing", "rng_garbage",
                                  "scheduler_missing", "weights_truncated"])
def test_checkpoint_metadata_is_validated_before_anything_changes(run_dir, edit):
    latest = ckpt_lib.latest_checkpoint(run_dir)
    path = latest / ckpt_lib.STATE_FILE
    state = json.loads(path.read_text())
    if edit == "drop_tokens":
        del state["tokens"]
    elif edit == "drop_loader_states":
        del state["loader_states"]
    elif edit == "step":
        state["step"] = 6
    elif edit == "scheduler_missing":
        del state["scheduler"]
    elif edit == "rng_missing":
        (latest / "random_states_0.pkl").unlink()
    elif edit == "rng_garbage":
        torch.save({"nothing": 1}, latest / "random_states_0.pkl")
    elif edit == "weights_truncated":  # found only by loading: still before anything is written
        weights = latest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    path.write_text(json.dumps(state))
    (run_dir / "DIVERGED").write_text("an earlier attempt\n")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    match = {"drop_tokens": "lacks tokens", "drop_loader_states": "lacks loader_states",
             "step": "says step 6 but the directory is step_0000008", "rng_missing": "random_states_0.pkl.*missing",
             "rng_garbage": "random_states_0.pkl holds no RNG state",
             "scheduler_missing": "no LR scheduler state", "weights_truncated": "loading its model"}[edit]
    with pytest.raises(ConfigError, match=match):
        run(tiny_config(run_dir, train={"max_steps": 12}, checkpoint={"every": 4, "keep_last": 3}))
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # config.yaml, meta.json rewritten nowhere, DIVERGED kept


def test_resume_settings_are_checked_without_config_yaml(run_dir):
    (run_dir / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"optim.lr: 0.003 -> 0.001") as err:
        run(tiny_config(run_dir, train={"max_steps": 12}, optim={"lr": 1e-3}))
    assert "delete" not in str(err.value)


def test_export_refuses_an_incomplete_checkpoint(run_dir, tmp_path, capsys):
    from launch.export_hf import main

    latest = ckpt_lib.latest_checkpoint(run_dir)
    tmp = latest.with_name(latest.name + ".tmp")
    shutil.copytree(latest, tmp)
    assert main([str(run_dir), "--checkpoint", str(tmp), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "incomplete" in err and str(tmp) in err
    (latest / ckpt_lib.STATE_FILE).unlink()  # written last: without it the checkpoint is incomplete too
    assert main([str(run_dir), "--checkpoint", str(latest), "--out", str(tmp_path / "hf")]) == 2
    assert not (tmp_path / "hf").exists()


def test_a_safetensors_file_whose_header_length_looks_like_a_pickle_opcode_passes(tmp_path):
    """safetensors files start with their header length (8 bytes, little-endian): a first byte of
    0x80 followed by 2..5 is a length, not a pickle (seen on a 2-node run's model.safetensors)."""
    from safetensors.torch import load_file, save_file

    for n in range(500, 1500):
        path = tmp_path / "model.safetensors"
        save_file({"w" * n: torch.zeros(2)}, str(path))
        head = path.read_bytes()[:2]
        if head[0] == 0x80 and head[1] in (2, 3, 4, 5):
            break
    else:
        pytest.skip("no header length of that form found")
    scan_file(path)  # passes
    assert set(load_file(str(path))) == {"w" * n}


def test_the_scan_follows_the_memo_and_refuses_what_it_cannot_tell(tmp_path):
    import pickle

    def raw(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    # protocol 4 memoizes strings: a second torch tensor reuses "torch._utils" through BINGET
    scan_file(raw("ok.pkl", pickle.dumps([torch.zeros(1).numpy(), torch.zeros(1).numpy()], protocol=4)))
    # os.system spelled out by STACK_GLOBAL from memoized strings
    bad = (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x04echo\x94\x85\x94R\x94.")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        scan_file(raw("stack.pkl", bad))
    # the global's name from a value the scan cannot follow (a DUP of a string): refused, not guessed
    dup = b"\x80\x04\x8c\x05posix\x8c\x06system" + b"2" + b"0" + b"\x93."  # DUP, POP, STACK_GLOBAL
    with pytest.raises(UnsafePickleError, match="unknown global"):
        scan_file(raw("dup.pkl", dup))
    with pytest.raises(UnsafePickleError, match="extension code"):
        scan_file(raw("ext.pkl", b"\x80\x02\x82\x01)R."))


def test_resume_refuses_a_tmp_checkpoint_even_with_its_state_file(run_dir):
    latest = ckpt_lib.latest_checkpoint(run_dir)
    tmp = latest.with_name(latest.name + ".tmp")
    shutil.copytree(latest, tmp)  # killed between trainer_state.json and the rename
    with pytest.raises(ConfigError, match="incomplete checkpoint"):
        run(tiny_config(run_dir, train={"max_steps": 12}, checkpoint={"resume": str(tmp), "every": 4}))
