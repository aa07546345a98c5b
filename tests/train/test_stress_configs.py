"""The stress configs of the stability study (docs/stability_study.md): they load, say what the protocol
is, and run a few steps in every residual mode (sizes cut down, toy data: the study runs are not in CI)."""

import json
from pathlib import Path

import pytest
import torch

from mhc_lm.metrics import build_callbacks
from mhc_lm.model import MhcLmForCausalLM
from mhc_lm.train import Trainer, load_run_config
from mhc_lm.train.config import build_model_config

from .helpers import SEQ, toy_data

REPO = Path(__file__).resolve().parents[2]
MODES = ("standard", "hc", "mhc", "grid")
SMALL = ["model.vocab_size=512", "model.hidden_size=32", "model.intermediate_size=64",
         "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.max_position_embeddings=64",
         "model.sinkhorn_iters=5", f"data.seq_len={SEQ}", "data.vocab_size=512", "train.batch_size=2",
         "train.micro_batch_size=2", "train.max_steps=3", "train.eval_every=3", "train.eval_batches=1",
         "train.mixed_precision=no", "train.export_hf=false", "checkpoint.every=0", "logging.trackers=[]",
         "logging.progress_bar=false", "metrics.probe_every=2"]


@pytest.mark.parametrize("name", ["stress_cpu.yaml", "stress_gpu.yaml"])
def test_stress_config_is_the_protocol(name):
    """Deeper than the quickstart, clipping off, a high LR, every step logged; the grid tiles the depth."""
    for mode in MODES:
        cfg = load_run_config(REPO / "configs" / name, [f"model.residual_mode={mode}"])
        model = build_model_config(cfg.model)
        assert cfg.train.grad_clip == 0
        assert model.num_hidden_layers >= 12 and model.num_hidden_layers % model.grid_size ** 2 == 0
        assert cfg.optim.lr >= 3e-3 and cfg.logging.log_every == 1 and cfg.metrics.probe_every > 0


def test_stress_gpu_size_is_100m_to_350m_in_every_mode():
    for mode in MODES:
        cfg = load_run_config(REPO / "configs" / "stress_gpu.yaml", [f"model.residual_mode={mode}"])
        with torch.device("meta"):  # no memory, no init: only the shapes
            model = MhcLmForCausalLM(build_model_config(cfg.model))
        assert 100e6 <= sum(p.numel() for p in model.parameters()) <= 350e6


@pytest.mark.parametrize("name", ["stress_cpu.yaml", "stress_gpu.yaml"])
@pytest.mark.parametrize("mode", MODES)
def test_stress_config_runs_a_few_steps(tmp_path, name, mode):
    """Three unclipped steps at the config's LR and schedule, probes on (Amax for hc/mhc), cut to toy sizes."""
    cfg = load_run_config(REPO / "configs" / name,
                          [f"model.residual_mode={mode}", f"run_dir={tmp_path / 'run'}", "model.num_hidden_layers=4",
                           "model.fused_kernels=false", *SMALL])
    Trainer(cfg, data=toy_data(cfg), callbacks=build_callbacks(cfg)).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    amax = [r["amax/fwd/composite"] for r in records if "amax/fwd/composite" in r]
    assert len(amax) >= 2  # step 0 (init) and step 2
    if mode in ("standard", "grid"):
        assert amax == [1.0] * len(amax)
