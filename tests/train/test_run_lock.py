"""One trainer per run directory: a second one is refused naming the holder, a killed holder
leaves no stale lock, and a refused start changes nothing."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mhc_lm.train import Trainer
from mhc_lm.train import run_lock
from tests.train.helpers import tiny_config, toy_data

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from mhc_lm.train import run_lock
lock = run_lock.acquire({run_dir!r})
print("HELD", flush=True)
time.sleep(300)
"""


def test_a_second_trainer_is_refused_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, train={"max_steps": 4})
    assert Trainer(cfg, data=toy_data(cfg)).fit() == "completed"
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    held = run_lock.acquire(run_dir)  # the first trainer, still running
    try:
        cfg = tiny_config(run_dir, train={"max_steps": 8}, optim={"lr": 1e-3})
        with pytest.raises(run_lock.RunLockError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            Trainer(cfg, data=toy_data(cfg)).fit()
    finally:
        held.release()
    after = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before
    assert not (run_dir / run_lock.LOCK_FILE).exists()  # released: nothing left behind


def test_kill_9_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), run_dir=str(run_dir))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        with pytest.raises(run_lock.RunLockError, match=f"pid {proc.pid} on host"):
            run_lock.acquire(run_dir)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert (run_dir / run_lock.LOCK_FILE).exists()  # the dead holder's note stays, but not its lock
    lock = run_lock.acquire(run_dir)
    assert f'"pid": {os.getpid()}' in (run_dir / run_lock.LOCK_FILE).read_text()
    lock.release()


def test_a_lock_is_free_again_after_the_run(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, train={"max_steps": 2})
    Trainer(cfg, data=toy_data(cfg)).fit()
    run_lock.acquire(run_dir).release()  # fit released it


def test_pretrain_started_into_a_held_run_dir_exits_2_naming_the_holder(tmp_path, capsys):
    import launch.pretrain as pretrain
    from tests.data.conftest import synthetic_docs, write_txt
    from tests.train.test_user_errors import config_file

    write_txt(tmp_path / "txt", synthetic_docs(12))
    cfg = config_file(tmp_path, [str(tmp_path / "txt" / "*.txt")])
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), run_dir=str(run_dir))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        assert pretrain.main(["--config", str(cfg)]) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("[mhc-lm] preparing")]
    assert len(err) == 1 and f"pid {proc.pid} on host {socket.gethostname()}" in err[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [run_lock.LOCK_FILE]  # the holder's note only
    assert pretrain.main(["--config", str(cfg)]) == 0  # the holder is gone: the run goes ahead
