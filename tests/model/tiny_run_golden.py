"""Train losses of the tiny CPU runs (configs/tiny_cpu.yaml, 20 steps, every residual mode) and
the parameter names of each mode's model: the golden file tests/assets/losses/tiny_cpu_20.json
holds them, and test_tiny_run_golden.py compares a fresh run against it, so a restructure of the
model code that changes a loss or a state-dict key is caught.

    python tests/model/tiny_run_golden.py            # rewrite the golden file (only on purpose)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/assets/losses/tiny_cpu_20.json"
MODES = ("standard", "hc", "mhc", "grid")
VARIANTS = {  # name -> model overrides on top of configs/tiny_cpu.yaml (run by the slow test)
    "mhc_permutation": ["model.residual_mode=mhc", "model.h_res_map=permutation"],
    "mhc_kronecker": ["model.residual_mode=mhc", "model.h_res_map=kronecker"],
    "mhc_orthostochastic": ["model.residual_mode=mhc", "model.h_res_map=orthostochastic"],
    "mhc_orthogonal": ["model.residual_mode=mhc", "model.h_res_map=orthogonal"],
    "mhc_identity_init": ["model.residual_mode=mhc", "model.mhc_init=identity"],
    "mhc_block_recompute": ["model.residual_mode=mhc", "model.mixing_recompute=block"],
    "hc_static": ["model.residual_mode=hc", "model.hc_dynamic=false"],
    "standard_post_norm": ["model.residual_mode=standard", "model.block_norm=post"],
    "grid_post_norm": ["model.residual_mode=grid", "model.block_norm=post"],
}
# the torch reference path of the mixing ops (`model.cpu_kernels: false`) against the same recording:
# the CPU kernels (the default) and the references compute the same maths
REFERENCE_PATH = {"hc_reference": "hc", "mhc_reference": "mhc"}
STEPS = 20


def overrides_of(name: str) -> list[str]:
    if name in REFERENCE_PATH:
        return [f"model.residual_mode={REFERENCE_PATH[name]}", "model.cpu_kernels=false"]
    return VARIANTS.get(name, [f"model.residual_mode={name}"])


def tiny_run(name: str, work_dir: Path, data_dir: Path) -> dict:
    """One 20-step run of configs/tiny_cpu.yaml on one thread: its per-step train losses and the
    model's state-dict keys."""
    from mhc_lm.train import Trainer, load_run_config
    from mhc_lm.train.run_log import read_metrics

    run_dir = work_dir / f"run_{name}"
    config = load_run_config(REPO / "configs/tiny_cpu.yaml", [
        *overrides_of(name), f"train.max_steps={STEPS}", f"run_dir={run_dir}",
        f"data.out_dir={data_dir}", "checkpoint.every=1000", "train.eval_every=1000", "metrics.probe_every=1000"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(config)
        trainer.fit()
        keys = sorted(trainer.unwrapped_model.state_dict().keys())
    finally:
        torch.set_num_threads(threads)
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "step" in r]
    return {"losses": losses, "state_dict_keys": keys}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {name: tiny_run(name, tmp, tmp / "data") for name in (*MODES, *VARIANTS)}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps({"config": "configs/tiny_cpu.yaml", "steps": STEPS, "threads": 1, "runs": runs},
                                 indent=1) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
