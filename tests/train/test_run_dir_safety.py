"""A run never writes into a folder that holds other files, and a damaged checkpoint is a clear
error that names it and the checkpoint to fall back to."""

import json

import pytest

from mhc_lm.config_utils import ConfigError
from mhc_lm.train import Trainer
from mhc_lm.train import checkpoint as ckpt_lib
from tests.train.helpers import tiny_config, toy_data


def run(cfg):
    return Trainer(cfg, data=toy_data(cfg)).fit()


def test_a_folder_with_other_files_is_refused_and_left_alone(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    (mine / "model.safetensors").write_bytes(b"my weights")
    with pytest.raises(ConfigError, match=r"not from a training run \(config.json, model.safetensors\)"):
        run(tiny_config(mine, train={"max_steps": 2}))
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "model.safetensors"]
    assert (mine / "model.safetensors").read_bytes() == b"my weights"
    # an empty folder, and one left by a kill between config.yaml and meta.json, are fine
    (tmp_path / "empty").mkdir()
    assert run(tiny_config(tmp_path / "empty", train={"max_steps": 2})) == "completed"
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text("run_dir: x\n")
    assert run(tiny_config(killed, train={"max_steps": 2})) == "completed"


@pytest.mark.parametrize("damage", ["state_json", "weights"])
def test_a_damaged_latest_checkpoint_names_itself_and_the_previous_one(tmp_path, damage):
    run_dir = tmp_path / "run"
    run(tiny_config(run_dir, train={"max_steps": 8}, checkpoint={"every": 4, "keep_last": 3}))
    older, latest = ckpt_lib.complete_checkpoints(run_dir)[-2:]
    if damage == "state_json":
        state = latest / ckpt_lib.STATE_FILE
        state.write_text(state.read_text()[:40])  # truncated by a full disk
    else:
        weights = next(latest.rglob("model*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    cfg = tiny_config(run_dir, train={"max_steps": 12}, checkpoint={"every": 4, "keep_last": 3})
    with pytest.raises(ConfigError, match="cannot be resumed") as err:
        run(cfg)
    assert str(latest) in str(err.value) and str(older) in str(err.value)
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before  # nothing rewritten
    # the suggested fix works: move the damaged folder away, resume=auto takes the previous one
    latest.rename(tmp_path / "damaged")
    assert run(cfg) == "completed"
    assert json.loads((ckpt_lib.latest_checkpoint(run_dir) / ckpt_lib.STATE_FILE).read_text())["step"] == 12


def test_a_checkpoint_of_another_strategy_is_named_as_such_not_as_damaged(tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_config(run_dir, train={"max_steps": 4}, checkpoint={"every": 4}))
    latest = ckpt_lib.latest_checkpoint(run_dir)
    state = json.loads((latest / ckpt_lib.STATE_FILE).read_text())
    assert state["distributed_type"] == "DDP / single process"
    state["distributed_type"] = "DEEPSPEED"  # as a ZeRO run writes it
    (latest / ckpt_lib.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"written under DEEPSPEED, this run uses DDP / single process") as err:
        run(tiny_config(run_dir, train={"max_steps": 8}, checkpoint={"every": 4}))
    assert "damaged" not in str(err.value)
