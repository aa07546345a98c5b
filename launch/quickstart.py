"""Quickstart: prepare the embedded corpus, train the tiny model in all four residual modes on
CPU, export each as a Hugging Face folder, and plot their loss curves side by side.

    python launch/quickstart.py                  # 4 x 300 steps: ~3.5 min on 2 CPU cores (README)
    python launch/quickstart.py --steps 100 --modes standard mhc
    python launch/quickstart.py train.batch_size=16 --steps 200   # dotted overrides before --modes

Outputs under runs/quickstart/: {standard,hc,mhc,grid}/ (run dirs with metrics.jsonl,
checkpoints/, hf/), loss_curves.png and summary.json. Rerunning resumes or reuses finished runs (a
reused run keeps the wall_s summary.json gave it when it trained).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mhc_lm.model.residual_modes import RESIDUAL_MODES  # noqa: E402

MODES = tuple(RESIDUAL_MODES)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def plot(out_dir: Path, modes: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mhc_lm.run_dir import read_metrics

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in modes:
        records = read_metrics(out_dir / mode / "metrics.jsonl")
        train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        steps, losses = zip(*train)
        ax_train.plot(steps, smooth(list(losses)), label=mode)
        if val:
            ax_val.plot(*zip(*val), marker="o", label=mode)
    ax_train.set(title="train loss (EMA 0.9)", xlabel="step", ylabel="cross-entropy")
    ax_val.set(title="validation loss", xlabel="step", ylabel="cross-entropy")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("mhc-lm tiny model on the embedded corpus: residual modes compared")
    fig.tight_layout()
    path = out_dir / "loss_curves.png"
    tmp = path.with_name("loss_curves.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def read_summary(path: Path) -> dict:
    """An earlier summary.json ({} when absent or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finished(run_dir: Path, steps: int) -> bool:
    """The run already logged its last training step (a rerun trains nothing)."""
    from mhc_lm.train.run_log import read_metrics

    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return False
    return any(r.get("step") == steps and "loss" in r for r in read_metrics(metrics))


def start_kernel_warmup(configs) -> subprocess.Popen | None:
    """Compile the CPU kernels in a background process (`python -m mhc_lm.cpu_kernels.warm`) while the
    data is prepared and standard trains: ~25 s once per machine, then a cache load. None when no run
    uses them (CUDA, `model.cpu_kernels: false`, standard only) or numba is missing."""
    import torch

    if torch.cuda.is_available() or not any(c.model.cpu_kernels is not False and c.model.residual_mode != "standard"
                                            for c in configs):
        return None
    try:
        import mhc_lm.cpu_kernels  # noqa: F401
    except ImportError:
        return None
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, "-m", "mhc_lm.cpu_kernels.warm", "--background"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_cpu.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("overrides", nargs="*", help="extra dotted overrides for every run")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    import mhc_lm.train as train
    from mhc_lm.config_utils import ConfigError
    from mhc_lm.train.config import REPO_ROOT

    config_path = Path(args.config) if Path(args.config).is_file() else REPO_ROOT / args.config
    try:
        base = train.load_run_config(config_path, args.overrides)
        configs = [train.load_run_config(config_path, [
            *args.overrides, f"model.residual_mode={mode}", f"run_dir={args.out / mode}",
            f"train.max_steps={args.steps}", f"train.eval_every={max(1, args.steps // 6)}"]) for mode in args.modes]
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    warmup = start_kernel_warmup(configs)
    try:
        return train_all(args, base, configs)
    finally:
        if warmup is not None and warmup.poll() is None:
            warmup.terminate()  # an early exit; a half-written cache entry is recompiled by the next run
            warmup.wait()


def train_all(args, base, configs) -> int:
    """Prepare the data, train every mode (resuming or reusing finished runs), plot, summarise."""
    import torch

    from mhc_lm import data, train
    from mhc_lm.config_utils import ConfigError
    from mhc_lm.metrics import build_callbacks
    from mhc_lm.run_dir import read_metrics

    print(f"[quickstart] preparing the embedded corpus -> {base.data.out_dir}", flush=True)
    data.prepare_data(base.data)
    summary = {}
    old_summary = read_summary(args.out / "summary.json")
    for mode, cfg in zip(args.modes, configs):
        print(f"[quickstart] training residual_mode={mode} for {args.steps} steps -> {cfg.run_dir}", flush=True)
        t0 = time.time()
        finished = _finished(Path(cfg.run_dir), args.steps)  # a finished run is reused: its wall time stays
        torch.manual_seed(cfg.train.seed)
        try:
            status = train.Trainer(cfg, callbacks=build_callbacks(cfg)).fit()
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
        if status != "completed":
            print(f"[quickstart] {mode} was {status} at a checkpoint: no table, plot or summary from unfinished "
                  "runs; rerun the same command to resume", file=sys.stderr)
            return 4
        records = read_metrics(Path(cfg.run_dir) / "metrics.jsonl")
        train_records = [r for r in records if "loss" in r]
        val = [r["val_loss"] for r in records if "val_loss" in r]
        tail = train_records[-20:]
        summary[mode] = {
            "final_train_loss": sum(r["loss"] for r in tail) / len(tail),
            "final_val_loss": val[-1] if val else None,
            "tokens_per_s": sum(r["tokens_per_s"] for r in tail) / len(tail),
            "wall_s": (old_summary.get(mode, {}).get("wall_s") if finished else None) or round(time.time() - t0, 1),
            "hf_dir": str(Path(cfg.run_dir) / "hf"),
        }
    png = plot(args.out, args.modes)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| mode | train loss (last 20) | val loss | tokens/s |\n|---|---:|---:|---:|")
    for mode, s in summary.items():
        val = f"{s['final_val_loss']:.3f}" if s["final_val_loss"] is not None else "-"
        print(f"| {mode} | {s['final_train_loss']:.3f} | {val} | {s['tokens_per_s']:.0f} |")
    print(f"\nloss curves: {png}\nexported models: {args.out}/<mode> (files in <mode>/hf, linked at the top): "
          f"AutoModelForCausalLM.from_pretrained('{args.out}/{args.modes[0]}', trust_remote_code=True)\n"
          f"compare the modes (-> {args.out}/compare): python -m evals.compare "
          f"{' '.join(f'{args.out}/{m}' for m in args.modes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
