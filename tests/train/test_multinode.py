"""Two "machines" on loopback: two `accelerate launch --num_machines 2 --machine_rank 0|1` (gloo,
one CPU process each) sharing one filesystem train with data preparation by rank 0, checkpoint,
resume and export; the run lock is taken once per run (by rank 0 of node 0), so node 1 neither
waits forever nor is refused."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhc_lm.train.run_log import read_metrics
from tests.data.conftest import synthetic_docs, write_txt

REPO = Path(__file__).resolve().parents[2]
CONFIG = """model: {{vocab_size: 512, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
  num_key_value_heads: 1, max_position_embeddings: 64, residual_mode: mhc, n_streams: 2}}
train: {{max_steps: 4, batch_size: 4, micro_batch_size: 2, eval_every: 0, export_hf: true}}
logging: {{progress_bar: false}}
metrics: {{enabled: false}}
checkpoint: {{every: 2}}
data: {{train_files: ['{tmp}/txt/*.txt'], vocab_size: 400, seq_len: 16, val_fraction: 0.1, num_proc: 1,
  out_dir: '{tmp}/prepared'}}
run_dir: '{tmp}/run'
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_nodes(config: Path, overrides=(), timeout=400) -> list[str]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))
    procs = []
    for rank in (1, 0):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "launch" / "pretrain.py"), "--config", str(config), *overrides]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-3000:]
        outs.append(out)
    return outs[::-1]  # node 0 first


@pytest.mark.slow
def test_two_machines_train_checkpoint_resume_and_export(tmp_path):
    write_txt(tmp_path / "txt", synthetic_docs(12))
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    run_dir = tmp_path / "run"
    node0, _ = launch_two_nodes(config)
    assert "completed" in node0
    assert json.loads((run_dir / "meta.json").read_text())["world_size"] == 2
    ckpt = run_dir / "checkpoints" / "step_0000004"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}
    assert not (run_dir / ".run.lock").exists()  # released at the end

    node0, _ = launch_two_nodes(config, ["train.max_steps=6"])
    assert "resumed from" in node0 and "step_0000004" in node0
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]

    from transformers import AutoModelForCausalLM

    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "export_hf.py"), str(run_dir), "--out", str(out)],
                          cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        end = AutoModelForCausalLM.from_pretrained(run_dir / "hf", trust_remote_code=True)(ids).logits
        again = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)(ids).logits
    torch.testing.assert_close(again, end)
