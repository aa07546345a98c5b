"""Issue 16: distributed-path defects that the CPU suite missed, each reproduced where CPU allows.

- ZeRO-1 + bf16 (DeepSpeed's BF16_Optimizer layout): the end-of-run export and launch/export_hf.py
  read the fp32 masters; the update ratio is measured on them (2 processes, gloo).
- FSDP (FSDP1 over gloo, 2 processes, torch.distributed directly: Accelerate refuses FSDP
  without an accelerator): the probe runs at step 0 through the wrapped model; the mixed-precision
  policy the trainer gives Accelerate keeps fp32 parameters inside forward and reduces in fp32.
- Data preparation: rank 0 prepares while the others wait on a file, not in a collective, so a
  preparation longer than the process-group timeout does not abort the job.
- launch/slurm_pretrain.sh hands the job's CPUs to the srun step.
The 2-process workers are in tests/train/dist_worker.py.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhc_lm.train.run_log import read_metrics
from tests.train.test_distributed import failure, launch

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "train" / "dist_worker.py"


def torchrun(mode: str, tmp_path: Path, *args: str, timeout: int = 240) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), mode, str(tmp_path), *args]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, failure(out)
    return out.stdout


# ------------------------------------------------------------------ findings 1 and 7: ZeRO-1 + bf16
def _ratio(before: dict, after: dict, names) -> float:
    d = sum((after[n].double() - before[n].double()).pow(2).sum().item() for n in names)
    s = sum(before[n].double().pow(2).sum().item() for n in names)
    return math.sqrt(d / s)


def test_zero1_bf16_run_exports_fp32_masters_and_measures_updates_on_them(tmp_path):
    from safetensors.torch import load_file

    from launch.export_hf import main as export_cli
    from mhc_lm.train.ds_checkpoint import zero_fp32_state_dict

    run_dir = tmp_path / "z1bf16"
    # lr 1e-5: Adam moves each weight by ~1e-5, below bf16's spacing (~1.2e-4 at |w| ~ 0.02), so the
    # bf16 module weights barely move while the fp32 masters do
    launch("configs/accelerate/cpu_deepspeed_zero1_2proc.yaml", run_dir, tmp_path, [
        "train.mixed_precision=bf16", "train.max_steps=2", "checkpoint.every=1", "checkpoint.keep_last=2",
        "optim.lr=1e-5", "metrics.enabled=true", "metrics.probe_every=2", "metrics.probe_at_init=false"])
    ckpts = [run_dir / "checkpoints" / f"step_{s:07d}" for s in (1, 2)]
    assert any(p.name.startswith("bf16_zero_pp_rank_") for p in (ckpts[1] / "pytorch_model").iterdir())

    # finding 1: the end-of-run export holds the fp32 masters, whose bf16 rounding is the module
    exported = load_file(str(run_dir / "hf" / "model.safetensors"))
    module = torch.load(ckpts[1] / "pytorch_model" / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)["module"]
    not_bf16 = 0
    for name, w in module.items():
        if name in exported:
            assert exported[name].dtype == torch.float32
            assert torch.equal(exported[name].to(torch.bfloat16), w), name
            not_bf16 += int((exported[name].to(torch.bfloat16).float() != exported[name]).sum())
    assert not_bf16 > 0.5 * sum(t.numel() for t in exported.values())  # masters, not bf16 copies
    assert export_cli([str(run_dir), "--out", str(tmp_path / "cli")]) == 0  # launch/export_hf.py too
    cli = load_file(str(tmp_path / "cli" / "model.safetensors"))
    assert all(torch.equal(cli[k], exported[k]) for k in exported)

    # finding 7: the logged update ratio of step 2 is that of the fp32 masters
    masters = [zero_fp32_state_dict(p) for p in ckpts]
    modules = [torch.load(p / "pytorch_model" / "mp_rank_00_model_states.pt", map_location="cpu",
                          weights_only=False)["module"] for p in ckpts]
    names = [n for n in exported if n != "lm_head.weight"]  # tied: counted once, as named_parameters does
    want, bf16_view = _ratio(masters[0], masters[1], names), _ratio(modules[0], modules[1], names)
    logged = [r for r in read_metrics(run_dir / "metrics.jsonl") if "update_ratio/global" in r]
    assert [r["step"] for r in logged] == [2]
    got = logged[0]["update_ratio/global"]
    assert got == pytest.approx(want, rel=1e-4), (got, want, bf16_view)
    assert abs(bf16_view - want) > 0.2 * want  # what the module weights would have said


@pytest.mark.slow
def test_zero3_bf16_probe_at_step_0_and_export(tmp_path):
    """ZeRO-3 + bf16 names its optimizer files `bf16_zero_pp_rank_*` too, but is a ZeRO layout: the
    export goes through DeepSpeed's reader. The probe at step 0 runs on the unwrapped model (ZeRO-3
    gathers parameters through hooks on the modules)."""
    from safetensors.torch import load_file

    from mhc_lm.train.ds_checkpoint import zero_fp32_state_dict

    run_dir = tmp_path / "z3bf16"
    launch("configs/accelerate/cpu_deepspeed_zero3_2proc.yaml", run_dir, tmp_path, [
        "train.mixed_precision=bf16", "train.max_steps=2", "metrics.enabled=true", "metrics.probe_every=1"])
    step0 = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] == 0]
    assert step0 and "amax/fwd/composite" in step0[0] and math.isfinite(step0[0]["probe/loss"])
    exported = load_file(str(run_dir / "hf" / "model.safetensors"))
    masters = zero_fp32_state_dict(run_dir / "checkpoints" / "step_0000002")
    assert all(torch.equal(exported[k], masters[k]) for k in exported)


# ------------------------------------------------------------------ findings 2 and 5: FSDP on CPU
def test_fsdp_probe_at_step_0_and_fp32_parameters_inside_forward(tmp_path):
    out = torchrun("fsdp", tmp_path)
    report = json.loads((tmp_path / "fsdp_report.json").read_text())
    assert "FSDP OK" in out
    # finding 5: inside forward (bf16 autocast) parameters, mixing coefficients, streams and the
    # gradient reduction are fp32 (Accelerate's default policy made all of them bf16)
    assert set(report["param_dtypes_in_forward"].values()) == {"torch.float32"}, report["param_dtypes_in_forward"]
    assert any("mixing" in n for n in report["param_dtypes_in_forward"])
    assert report["stream_dtype"] == "torch.float32"
    assert report["reduce_dtypes"] == ["torch.float32"]
    assert report["matmul_dtype"] == "torch.bfloat16"  # autocast still computes in bf16
    # finding 2: the probe at step 0 ran (through the wrapped model) and equals the unsharded model's
    for key, want in report["reference_probe"].items():
        assert report["fsdp_probe"][key] == pytest.approx(want, rel=1e-4, abs=1e-6), key
    assert any(k.startswith("amax/") for k in report["fsdp_probe"])


def test_fsdp_plugin_keeps_fp32_params_and_reductions(monkeypatch):
    """The plugin build_accelerator hands to Accelerate: after Accelerate applies
    mixed_precision=bf16 (AcceleratorState does `set_mixed_precision`), the FSDP policy is still
    fp32 for parameters, gradient reduction and buffers; compute is left to autocast."""
    from mhc_lm.train.distributed import fsdp_plugin

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    plugin = fsdp_plugin()
    plugin.set_mixed_precision("bf16")  # what Accelerate does with train.mixed_precision=bf16
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype, policy.buffer_dtype) == (torch.float32,) * 3


@pytest.mark.gpu
def test_fsdp_through_accelerate_keeps_fp32_parameters_on_gpu(tmp_path):
    """Through `accelerate launch` with configs/accelerate/fsdp_8gpu.yaml on the GPUs present:
    the probe at step 0 and fp32 parameters inside forward (the CPU test uses FSDP directly)."""
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip("needs 2 CUDA devices")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs/accelerate/fsdp_8gpu.yaml"), "--num_processes", str(n), str(WORKER),
           "accelerate_fsdp", str(tmp_path)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, failure(out)
    report = json.loads((tmp_path / "fsdp_report.json").read_text())
    assert set(report["param_dtypes_in_forward"].values()) == {"torch.float32"}
    assert "probe/loss" in report["step0_probe"]


# ------------------------------------------------------------------ finding 3: data preparation
def test_data_preparation_longer_than_the_collective_timeout(tmp_path):
    """Rank 0 prepares for 6 s; the process group times out collectives after 2 s. Waiting in a
    barrier (main_process_first) aborted here; waiting on rank 0's status file does not."""
    out = torchrun("data_wait", tmp_path, "6", "2")
    assert out.count("DATA OK") == 2, out


def test_failures_on_rank_0_reach_the_other_ranks(tmp_path):
    """Data preparation and the end-of-run export run on rank 0 alone: when they raise, every rank
    stops with rank 0's message (finding 1: the other ranks hung in a barrier until the timeout)."""
    out = torchrun("data_fail", tmp_path)
    assert out.count("DATA FAILED ON RANK 0 SEEN") == 2, out
    assert out.count("EXPORT FAILED ON RANK 0 SEEN") == 2, out


# ------------------------------------------------------------------ finding 6: Slurm
def test_slurm_script_gives_the_step_the_jobs_cpus(tmp_path):
    script = REPO / "launch" / "slurm_pretrain.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    # Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch
    assert "export SRUN_CPUS_PER_TASK=" in text
    srun = text[text.index("\nsrun "):]
    assert "--cpus-per-task=" in srun.split("bash -c")[0]
    # run it with stand-ins for srun / scontrol: the step is asked for the job's 64 CPUs per task
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\necho "SRUN_CPUS_PER_TASK=$SRUN_CPUS_PER_TASK ARGS=$*" > "$SRUN_LOG"\n')
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[1-2]", SLURM_NNODES="2",
               SLURM_CPUS_PER_TASK="64", SLURM_SUBMIT_DIR=str(tmp_path), SRUN_LOG=str(tmp_path / "srun.log"))
    subprocess.run(["bash", str(script), "configs/mhc_1b.yaml"], env=env, check=True, timeout=30)
    line = (tmp_path / "srun.log").read_text()
    assert line.startswith("SRUN_CPUS_PER_TASK=64 ") and "--cpus-per-task=64" in line, line
