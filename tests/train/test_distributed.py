"""Multi-process CPU runs through `accelerate launch` (gloo): DDP and DeepSpeed ZeRO give the
losses of a single process with the same global batch; SIGTERM + resume is bit-exact."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mhc_lm.config_utils import save_config
from mhc_lm.train import Trainer
from mhc_lm.train.run_log import read_metrics
from tests.train.helpers import one_thread, tiny_config, toy_data

REPO = Path(__file__).resolve().parents[2]
TOY_RUN = REPO / "tests" / "train" / "toy_run.py"


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    e.pop("WORLD_SIZE", None)
    return e


def series(run_dir, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if key in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single process, in-process, one thread: micro-batch 2 x accumulation 2 = global batch 4."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    cfg = tiny_config(run_dir, "mhc")
    with one_thread():  # module scope: set up before the per-test one-thread fixture
        trainer = Trainer(cfg, data=toy_data(cfg))
        assert trainer.accumulation == 2
        trainer.fit()
    return run_dir


def launch(config_file, run_dir, tmp_path, overrides=(), timeout=300):
    cfg_path = tmp_path / "run.yaml"
    save_config(tiny_config(run_dir, "mhc", train={"export_hf": True}), cfg_path)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / config_file),
           str(TOY_RUN), str(cfg_path), *overrides]
    out = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, failure(out)
    return out.stdout


def failure(out) -> str:
    """What a failed launch printed, the ranks' own lines first: the launcher's ChildFailedError
    report fills the tail of stderr and hides the cause (a rank's abort message, its traceback)."""
    launcher = ("torch/distributed", "accelerate/commands", "ChildFailedError", "launch_agent", "elastic_launch")
    salient = [line for line in out.stderr.splitlines()
               if any(k in line for k in ("rror", "erminat", "abort", "Abort", "Fatal", "xception", "signal"))
               and not any(k in line for k in launcher)]
    return "\n".join(["rank lines:", *salient[:30], "--- stdout tail:", out.stdout[-1500:],
                      "--- stderr head:", out.stderr[:2500]])


def assert_same_losses(run_dir, reference, rtol=1e-5):
    got, want = series(run_dir), series(reference)
    assert [s for s, _ in got] == [s for s, _ in want]
    torch.testing.assert_close(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]), rtol=rtol, atol=0)
    gv, wv = series(run_dir, "val_loss"), series(reference, "val_loss")
    torch.testing.assert_close(torch.tensor([v for _, v in gv]), torch.tensor([v for _, v in wv]), rtol=rtol, atol=0)


def test_two_process_ddp_matches_single_process(tmp_path, reference):
    stdout = launch("configs/accelerate/cpu_ddp_2proc.yaml", tmp_path / "ddp", tmp_path)
    assert "world_size=2" in stdout and "MULTI_CPU" in stdout
    # nothing holds the process group into interpreter teardown (where gloo's threads aborted ranks)
    assert "live_ddp=0" in stdout
    assert_same_losses(tmp_path / "ddp", reference)


def assert_export_matches_checkpoint(run_dir, tmp_path):
    """run_dir/hf (gathered at the end of the run) == launch/export_hf.py of the last checkpoint."""
    from transformers import AutoModelForCausalLM

    from mhc_lm.train.export import export_run_dir

    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        end = AutoModelForCausalLM.from_pretrained(run_dir / "hf", trust_remote_code=True)(ids).logits
        again = export_run_dir(run_dir, tmp_path / "exported")
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True)(ids).logits, end)


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_matches_single_process(tmp_path, reference, stage):
    stdout = launch(f"configs/accelerate/cpu_deepspeed_zero{stage}_2proc.yaml", tmp_path / "ds", tmp_path)
    assert "world_size=2" in stdout and "DEEPSPEED" in stdout
    assert_same_losses(tmp_path / "ds", reference)
    assert_export_matches_checkpoint(tmp_path / "ds", tmp_path)
    if stage == 2:  # resume a DeepSpeed checkpoint: extend the finished run by 2 steps
        before = series(tmp_path / "ds")
        stdout = launch(f"configs/accelerate/cpu_deepspeed_zero{stage}_2proc.yaml", tmp_path / "ds", tmp_path,
                        ["train.max_steps=10"])
        assert "resumed from" in stdout and "step_0000008" in stdout
        after = series(tmp_path / "ds")
        assert after[:8] == before and [s for s, _ in after[8:]] == [9, 10]


@pytest.mark.slow
def test_deepspeed_zero3_matches_single_process(tmp_path, reference):
    stdout = launch("configs/accelerate/cpu_deepspeed_zero3_2proc.yaml", tmp_path / "ds3", tmp_path)
    assert "world_size=2" in stdout
    assert_same_losses(tmp_path / "ds3", reference)
    assert_export_matches_checkpoint(tmp_path / "ds3", tmp_path)


def test_sigterm_then_resume_is_bit_exact(tmp_path):
    """Kill a run with SIGTERM mid-way: it checkpoints and stops; rerunning the same command
    resumes, and the whole loss sequence equals an uninterrupted run's bit for bit."""
    steps = 16
    cfg_path = tmp_path / "run.yaml"
    run_dir = tmp_path / "run"
    save_config(tiny_config(run_dir, "grid", train={"max_steps": steps}, checkpoint={"every": 0}), cfg_path)
    cmd = [sys.executable, str(TOY_RUN), str(cfg_path)]

    ref_dir = tmp_path / "ref"
    ref = subprocess.run(cmd + [f"run_dir={ref_dir}"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=200)
    assert ref.returncode == 0, ref.stderr[-3000:]

    slow = dict(env(), TOY_STEP_SLEEP="0.25")  # gives the test time to signal mid-run
    proc = subprocess.Popen(cmd, cwd=REPO, env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(series(run_dir)) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "STATUS interrupted" in stdout
    stopped_at = series(run_dir)[-1][0]
    assert 3 <= stopped_at < steps
    assert (run_dir / "checkpoints" / f"step_{stopped_at:07d}" / "trainer_state.json").is_file()

    again = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "STATUS completed" in again.stdout
    assert series(run_dir) == series(ref_dir)
    assert series(run_dir, "val_loss") == series(ref_dir, "val_loss")


def test_deepspeed_runs_hc_with_its_scalar_gates(tmp_path):
    # hc's dynamic scales were 0-dim parameters, which DeepSpeed's parameter broadcast cannot view as
    # bytes: prepare() failed for every ZeRO stage. Same losses as one process, as for mhc.
    single = tmp_path / "single"
    cfg = tiny_config(single, "hc", train={"max_steps": 4})
    Trainer(cfg, data=toy_data(cfg)).fit()  # one thread: tests/train/conftest.py
    stdout = launch("configs/accelerate/cpu_deepspeed_zero2_2proc.yaml", tmp_path / "ds", tmp_path,
                    ["model.residual_mode=hc", "train.max_steps=4", "train.export_hf=false"])
    assert "DEEPSPEED" in stdout
    assert_same_losses(tmp_path / "ds", single)
