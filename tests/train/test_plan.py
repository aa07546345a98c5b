"""launch/pretrain.py --dry-run and the start-of-run fit check (mhc_lm/train/plan.py): the 1B config's
figures offline on CPU, a GPU-sized run refused on a machine without CUDA with one line (exit 2,
nothing written), tiny CPU runs going ahead, the resume point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhc_lm.train import plan as plan_lib
from mhc_lm.train.config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without CUDA")


def _pretrain(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "pretrain.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_prints_the_1b_figures_offline(tmp_path):
    out = _pretrain("--config", str(ROOT / "configs" / "mhc_1b.yaml"), "--dry-run", f"run_dir={tmp_path / 'run'}",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "mhc model, 1,017,203,768 parameters" in text  # the 1B preset with its 32k vocabulary
    assert "524,288 tokens per step" in text and "38,000 steps" in text
    for cfg in (ROOT / "configs" / "accelerate").glob("*.yaml"):
        assert f"{cfg.stem} (" in text
    assert "activation_checkpointing=true" in text
    assert "Hub dataset HuggingFaceFW/fineweb-edu" in text and "offline: " in text
    assert "(new run)" in text
    assert not (tmp_path / "run").exists() and not (tmp_path / "data_cache").exists()  # nothing touched


@no_cuda
def test_a_gpu_sized_run_on_cpu_stops_with_one_line(tmp_path):
    out = _pretrain("--config", str(ROOT / "configs" / "mhc_1b.yaml"), f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: this run needs"), out.stderr
    assert "no CUDA device" in lines[0] and "GiB" in lines[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def _tiny(tmp_path, *overrides):
    return load_run_config(ROOT / "configs" / "tiny_cpu.yaml", [f"run_dir={tmp_path / 'run'}",
                                                                 f"data.out_dir={tmp_path / 'data'}", *overrides])


@no_cuda
def test_tiny_fits_and_a_long_cpu_run_needs_allow_cpu(tmp_path):
    plan = plan_lib.make_plan(_tiny(tmp_path), environ={})
    assert plan_lib.fit_problem(plan, environ={}) is None
    assert plan.train_flops < plan_lib.CPU_MAX_FLOPS
    assert "embedded corpus 'sotu'" in plan.data_source and plan.data_offline
    long = plan_lib.make_plan(_tiny(tmp_path, "train.max_steps=100000000"), environ={})
    problem = plan_lib.fit_problem(long, environ={})
    assert problem is not None and "--allow-cpu" in problem and "training FLOPs" in problem
    assert plan_lib.fit_problem(long, allow_cpu=True, environ={}) is None


@no_cuda
def test_memory_beyond_the_available_ram_is_refused_even_with_allow_cpu(tmp_path, monkeypatch):
    plan = plan_lib.make_plan(_tiny(tmp_path), environ={})
    monkeypatch.setattr(plan_lib, "_mem_available", lambda: plan.this_launch.total / 2)
    problem = plan_lib.fit_problem(plan, allow_cpu=True, environ={})
    assert problem is not None and "RAM available" in problem
    # two processes on this machine share it
    monkeypatch.setattr(plan_lib, "_mem_available", lambda: plan.this_launch.total * 1.5)
    assert plan_lib.fit_problem(plan, environ={}) is None
    assert plan_lib.fit_problem(plan, environ={"LOCAL_WORLD_SIZE": "2"}) is not None


def test_plan_names_the_checkpoint_it_would_resume(tmp_path):
    cfg = _tiny(tmp_path)
    assert plan_lib.resume_point(cfg) is None
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000100"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    plan = plan_lib.make_plan(cfg, environ={})
    assert plan.resume_from == str(ckpt)
    assert f"would resume from {ckpt}" in plan_lib.format_plan(plan)
    assert plan_lib.resume_point(_tiny(tmp_path, "checkpoint.resume=none")) is None


def test_mixing_parameters_are_counted_for_stream_modes(tmp_path):
    std = plan_lib.make_plan(_tiny(tmp_path), environ={})
    mhc = plan_lib.make_plan(_tiny(tmp_path, "model.residual_mode=mhc"), environ={})
    assert std.mixing_parameters == 0 and 0 < mhc.mixing_parameters < mhc.num_parameters
    assert std.num_parameters == 1_262_720  # configs/tiny_cpu.yaml: the tiny preset at vocab 4096
