"""Tables and figures of the stability study (docs/stability_study.md), read from finished runs.

    python -m evals.stability_study stress runs/stress_cpu/*_seed* --out docs/figures --prefix stress
    python -m evals.stability_study depth runs/post_depth64/*_seed* --out docs/figures --prefix post_depth64
    python -m evals.stability_study init --layers 64 --seeds 4 --init-range 0.02 0.2
    python -m evals.stability_study unigram data_cache/tiny_sotu_4k

Reads each run's config.yaml, metrics.jsonl and DIVERGED record (written by the trainer when the loss
or gradient norm became non-finite; launch/pretrain.py then exits with status 3 and the sweep goes
on with --keep-going). A diverged run is a result: it is listed with the step it diverged at, its
last finite values are shown, and it is counted, not averaged away.

`stress`: one row per run (final val loss, loss / grad-norm spikes, max composite Amax forward mean
and max over tokens, max grad norm, diverged at, wall time), then per mode the mean and sample std
(ddof = 1) over seeds; figure PREFIX.png: composite Amax, grad norm and train loss per step.
`depth`: per run the per-layer gradient RMS (`rms/grad/layer_XX`, dLoss/d(residual stream after
layer XX)) at the first probe (step 0 = init) and the last, the first/last-layer ratio, and the
vanished ratios at init and at the end; figure PREFIX.png: the per-layer profile, geometric mean
over seeds. Prints markdown; --out also writes PREFIX.md and PREFIX.json there.
`init` (no runs): the depth profile at init of a thin stack (hidden 32, 2 heads, random tokens) for
pre/post-norm x standard/grid, per seed and initializer_range: rms/grad layer 0 / last layer.
`unigram PREPARED_DIR`: the cross-entropy on the validation split of the unigram distribution of the
training split (add-0.5 smoothing): the loss of a model that ignores its input.

Wall time is the span from config.yaml (written when the run starts) to the last metrics.jsonl
write: training, probes and evaluation, not the final export.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from evals.comparison.load import MODE_ORDER
from evals.comparison.summary import EPS_KEYS
from mhc_lm.run_dir import RunDir, RunDirError

COLORS = {"standard": "tab:blue", "hc": "tab:red", "mhc": "tab:green", "grid": "tab:orange"}


# ---------------------------------------------------------------- loading
def load(run_dir: Path) -> dict:
    """{"path", "mode", "seed", "block_norm", "records", "diverged", "diverged_at", "wall_s", "max_steps"}
    of one run (RunDirError when it is not one). diverged_at: the step of the DIVERGED record (-1
    when an old note names none), None when the run did not diverge."""
    run = RunDir(run_dir)
    cfg = run.config()
    records = run.metrics()  # lines cut by a crash are skipped
    divergence = run.divergence()
    diverged_at = None if divergence is None else (divergence.step if divergence.step is not None else -1)
    max_steps = run.setting("train.max_steps", config=cfg)
    return {"path": str(run.path), "mode": run.mode(cfg), "seed": run.seed(cfg),
            "block_norm": run.setting("model.block_norm", "pre", cfg), "records": records,
            "diverged": None if divergence is None else divergence.message, "diverged_at": diverged_at,
            "wall_s": run.wall_seconds(), "max_steps": int(max_steps) if max_steps is not None else None}


def series(run: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the finite numeric entries `key`, last value per step."""
    by_step = {}
    for r in run["records"]:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            by_step[int(r["step"])] = float(v)
    steps = sorted(by_step)
    return np.array(steps, dtype=np.int64), np.array([by_step[s] for s in steps], dtype=np.float64)


def last(run: dict, key: str) -> float:
    _, v = series(run, key)
    return float(v[-1]) if len(v) else float("nan")


def peak(run: dict, key: str) -> float:
    _, v = series(run, key)
    return float(v.max()) if len(v) else float("nan")


def ordered(runs: list[dict]) -> list[dict]:
    rank = {m: i for i, m in enumerate(MODE_ORDER)}
    return sorted(runs, key=lambda r: (rank.get(r["mode"], 99), r["mode"], r["seed"]))


def by_mode(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """(mode, its rows) in the order the modes first appear (rows come from `ordered`)."""
    return [(mode, [r for r in rows if r["mode"] == mode]) for mode in dict.fromkeys(r["mode"] for r in rows)]


def diverged_text(row: dict) -> str:
    return "no" if row["diverged_at"] is None else f"step {row['diverged_at']}"


def fmt(x: float, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def mean_sd(values: list[float], spec: str = ".3g") -> str:
    v = np.array([x for x in values if math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return format(v[0], spec)
    return f"{format(v.mean(), spec)} ± {format(v.std(ddof=1), spec)}"


# ---------------------------------------------------------------- stress
def stress_row(run: dict) -> dict:
    steps, _ = series(run, "loss")
    return {
        "mode": run["mode"], "seed": run["seed"], "steps": int(steps[-1]) if len(steps) else 0,
        "final_val_loss": last(run, "val_loss"), "loss_spikes": last(run, "spike/loss_count"),
        "grad_norm_spikes": last(run, "spike/grad_norm_count"),
        "max_amax_fwd": peak(run, "amax/fwd/composite"), "max_amax_fwd_tokmax": peak(run, "amax/fwd/composite_max"),
        "final_amax_fwd": last(run, "amax/fwd/composite"), "max_grad_norm": peak(run, "grad_norm"),
        "diverged_at": run["diverged_at"], "wall_s": run["wall_s"],
    }


def stress_tables(runs: list[dict]) -> tuple[str, dict]:
    rows = [stress_row(r) for r in ordered(runs)]
    head = ("| mode | seed | steps | val loss (last eval) | loss spikes | grad-norm spikes | composite Amax fwd, "
            "max over probes: mean / max over tokens | max grad norm | diverged at | wall |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
    lines = [f"| {r['mode']} | {r['seed']} | {r['steps']} | {fmt(r['final_val_loss'], '.3f')} | "
             f"{fmt(r['loss_spikes'], '.0f')} | {fmt(r['grad_norm_spikes'], '.0f')} | "
             f"{fmt(r['max_amax_fwd'])} / {fmt(r['max_amax_fwd_tokmax'])} | {fmt(r['max_grad_norm'])} | "
             f"{diverged_text(r)} | "
             f"{r['wall_s'] / 60:.1f} min |" for r in rows]
    per_run = head + "\n".join(lines) + "\n"
    summary = {}
    mhead = ("| mode | seeds | diverged | val loss | loss spikes | grad-norm spikes "
             "| max composite Amax fwd (mean over tokens) | max grad norm | wall per run |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    mlines = []
    for mode, g in by_mode(rows):
        div = [r for r in g if r["diverged_at"] is not None]
        ok = [r for r in g if r["diverged_at"] is None]  # a diverged run's last eval is not a final loss
        summary[mode] = {"seeds": [r["seed"] for r in g], "diverged": {r["seed"]: r["diverged_at"] for r in div},
                         **{k: [r[k] for r in g] for k in g[0] if k not in ("mode", "seed")}}
        at = f" ({', '.join('step %d' % r['diverged_at'] for r in div)})" if div else ""
        mlines.append(
            f"| {mode} | {len(g)} | {len(div)}{at} | "
            f"{mean_sd([r['final_val_loss'] for r in ok], '.3f')} | {mean_sd([r['loss_spikes'] for r in g], '.2g')} | "
            f"{mean_sd([r['grad_norm_spikes'] for r in g], '.2g')} | {mean_sd([r['max_amax_fwd'] for r in g])} | "
            f"{mean_sd([r['max_grad_norm'] for r in g])} | {mean_sd([r['wall_s'] / 60 for r in g], '.2g')} min |")
    per_mode = mhead + "\n".join(mlines) + "\n"
    return ("Per mode (mean ± sample std over seeds; val loss over the runs that did not diverge):\n\n" + per_mode
            + "\nPer run:\n\n" + per_run), {"runs": rows, "modes": summary}


def stress_figure(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=80)
    seen = set()
    for run in ordered(runs):
        c, label = COLORS.get(run["mode"], "k"), None if run["mode"] in seen else run["mode"]
        seen.add(run["mode"])
        s, v = series(run, "amax/fwd/composite")
        axes[0].plot(s, v, "o-", ms=2, lw=1, color=c, label=label)
        s, v = series(run, "grad_norm")
        axes[1].plot(s, v, lw=0.6, color=c, alpha=0.7, label=label)
        s, v = series(run, "loss")
        axes[2].plot(s, v, lw=0.6, color=c, alpha=0.7, label=label)
        if run["diverged_at"] is not None:
            for ax in axes:
                ax.axvline(run["diverged_at"], color=c, ls=":", lw=1)
    for ax, title in zip(axes, ("composite Amax fwd (mean over tokens)", "grad norm (unclipped)", "train loss")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(top=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- depth
def layer_profile(run: dict, step: int) -> np.ndarray:
    """rms/grad/layer_XX at probe `step`, in layer order."""
    rec = {}
    for r in run["records"]:
        if int(r["step"]) == step:
            rec.update({k: v for k, v in r.items() if k.startswith("rms/grad/layer_")})
    keys = sorted(rec, key=lambda k: int(k.rsplit("_", 1)[1]))
    return np.array([rec[k] for k in keys], dtype=np.float64)


def probe_steps(run: dict) -> list[int]:
    return [int(s) for s in series(run, "rms/grad/layer_00")[0]]


def depth_row(run: dict) -> dict:
    steps = probe_steps(run)
    first, final = steps[0], steps[-1]
    p0, p1 = layer_profile(run, first), layer_profile(run, final)
    at = {int(r["step"]): r for r in run["records"] if "vanished/1e-04" in r}
    return {
        "mode": run["mode"], "seed": run["seed"], "block_norm": run["block_norm"], "init_step": first,
        "final_step": final, "val_loss": last(run, "val_loss"), "diverged_at": run["diverged_at"],
        "init_first_last": float(p0[0] / p0[-1]), "final_first_last": float(p1[0] / p1[-1]),
        # layers whose gradient RMS is under 1e-6 of the last layer's: they no longer learn from the loss
        "init_dead_layers": int((p0 < 1e-6 * p0[-1]).sum()), "final_dead_layers": int((p1 < 1e-6 * p1[-1]).sum()),
        "init_profile": p0.tolist(), "final_profile": p1.tolist(),
        "vanished_init": [at[first].get(k, float("nan")) for k in EPS_KEYS],
        "vanished_final": [at[final].get(k, float("nan")) for k in EPS_KEYS],
        "grad_std_init": at[first].get("grad_std", float("nan")),
        "grad_std_final": at[final].get("grad_std", float("nan")),
        "max_grad_norm": peak(run, "grad_norm"), "wall_s": run["wall_s"],
    }


def depth_tables(runs: list[dict]) -> tuple[str, dict]:
    rows = [depth_row(r) for r in ordered(runs)]
    pct = lambda v: " / ".join(fmt(100 * x, ".1f") for x in v)  # noqa: E731
    head = ("| mode | seed | val loss | rms/grad layer 0 / last, init | same, end (step) | vanished % 1e-4 / 1e-5 / "
            "1e-6 / 1e-7, init | same, end | grad std init / end | diverged at | wall |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
    lines = [f"| {r['mode']} | {r['seed']} | {fmt(r['val_loss'], '.3f')} | {fmt(r['init_first_last'], '.2g')} | "
             f"{fmt(r['final_first_last'], '.2g')} ({r['final_step']}) | {pct(r['vanished_init'])} | "
             f"{pct(r['vanished_final'])} | "
             f"{fmt(r['grad_std_init'])} / {fmt(r['grad_std_final'])} | "
             f"{diverged_text(r)} | {r['wall_s'] / 60:.1f} min |"
             for r in rows]
    mhead = ("| mode | seeds | val loss | rms/grad layer 0 / last, init (per seed) | same, end (per seed) "
             "| layers with rms/grad < 1e-6 x last, init / end | vanished % @1e-4, init | @1e-4, end | @1e-7, end |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    mlines = []
    for mode, g in by_mode(rows):
        mlines.append(f"| {mode} | {len(g)} | {mean_sd([r['val_loss'] for r in g], '.3f')} | "
                      f"{', '.join(fmt(r['init_first_last'], '.2g') for r in g)} | "
                      f"{', '.join(fmt(r['final_first_last'], '.2g') for r in g)} | "
                      f"{mean_sd([r['init_dead_layers'] for r in g], '.3g')} / "
                      f"{mean_sd([r['final_dead_layers'] for r in g], '.3g')} | "
                      f"{mean_sd([100 * r['vanished_init'][0] for r in g], '.1f')} | "
                      f"{mean_sd([100 * r['vanished_final'][0] for r in g], '.1f')} | "
                      f"{mean_sd([100 * r['vanished_final'][3] for r in g], '.1f')} |")
    text = ("Per mode (mean ± sample std over seeds):\n\n" + mhead + "\n".join(mlines) + "\n\nPer run:\n\n"
            + head + "\n".join(lines) + "\n")
    return text, {"runs": rows}


def depth_figure(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [depth_row(r) for r in ordered(runs)]
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=80)
    for mode, g in by_mode(rows):
        for key, ls, when in (("init_profile", "--", "init"), ("final_profile", "-", f"step {g[0]['final_step']}")):
            # geometric mean over seeds; an exact zero (underflow) is drawn at the 1e-30 floor
            prof = np.exp(np.mean([np.log(np.maximum(r[key], 1e-30)) for r in g], axis=0))
            ax.plot(np.arange(len(prof)), prof, ls, color=COLORS.get(mode, "k"), lw=1.2,
                    label=f"{mode} {g[0]['block_norm']}-norm, {when} ({len(g)} seeds)")
    ax.set_yscale("log")
    ax.set_xlabel("layer index (grid: module-major node order)", fontsize=8)
    ax.set_ylabel("RMS dLoss/d(stream after layer)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- init
def init_ratio(block_norm: str, mode: str, seed: int, layers: int, initializer_range: float,
               grid_size: int = 4) -> float:
    """rms/grad layer 0 / layer `layers - 1` at init of a thin stack on a random token batch (the probe's metric)."""
    import torch

    from mhc_lm.metrics import probe_model
    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM

    torch.manual_seed(seed)
    model = MhcLmForCausalLM(MhcLmConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, residual_mode=mode, grid_size=grid_size,
        block_norm=block_norm, initializer_range=initializer_range, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    ids = torch.randint(3, 97, (4, 33), generator=torch.Generator().manual_seed(100 + seed))  # (B, T + 1)
    m = probe_model(model, {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}, amax=False)
    return m["rms/grad/layer_00"] / m[f"rms/grad/layer_{layers - 1:02d}"]


def init_table(layers: int, seeds: int, ranges: list[float]) -> str:
    lines = ["| initializer_range | block norm | mode | rms/grad layer 0 / layer %d, per seed |" % (layers - 1),
             "|---:|---|---|---|"]
    for r in ranges:
        for norm in ("pre", "post"):
            for mode in ("standard", "grid"):
                vals = [init_ratio(norm, mode, s, layers, r) for s in range(seeds)]
                lines.append(f"| {r:g} | {norm} | {mode} | {', '.join(fmt(v) for v in vals)} |")
    return "\n".join(lines) + "\n"


def unigram_loss(prepared: Path) -> float:
    from mhc_lm.data import PackedTokens

    train, val = (np.concatenate([np.asarray(a) for a in PackedTokens(prepared, split=split).arrays])
                  for split in ("train", "val"))
    counts = np.bincount(train, minlength=int(max(train.max(), val.max())) + 1).astype(np.float64) + 0.5
    return float(-np.log(counts[val] / counts.sum()).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("stress", "depth", "init", "unigram"))
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--layers", type=int, default=64, help="init: depth (a multiple of 16 for the 4 x 4 grid)")
    parser.add_argument("--seeds", type=int, default=4, help="init: seeds 0..N-1")
    parser.add_argument("--init-range", type=float, nargs="+", default=[0.02, 0.2],
                        help="init: initializer_range values")
    parser.add_argument("--out", type=Path, default=None, help="folder for PREFIX.md, PREFIX.json, PREFIX.png")
    parser.add_argument("--prefix", default=None, help="file name stem (default: the kind)")
    args = parser.parse_args(argv)
    if args.kind == "init":
        print(init_table(args.layers, args.seeds, args.init_range))
        return 0
    if args.kind == "unigram":
        for d in args.run_dirs:
            print(f"{d}: unigram cross-entropy on val = {unigram_loss(d):.4f}")
        return 0
    if not args.run_dirs:
        parser.error(f"{args.kind}: give the run directories")
    try:
        runs = [load(d) for d in args.run_dirs]
    except RunDirError as err:  # one line, status 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    text, data = (stress_tables if args.kind == "stress" else depth_tables)(runs)
    print(text)
    if args.out:
        prefix = args.prefix or args.kind
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{prefix}.md").write_text(text)
        (args.out / f"{prefix}.json").write_text(json.dumps(data, indent=1) + "\n")
        (stress_figure if args.kind == "stress" else depth_figure)(runs, args.out / f"{prefix}.png")
        print(f"wrote {args.out / prefix}.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
