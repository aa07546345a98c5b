"""Cross-run comparison: overlay stability curves and tabulate them per residual mode.

    python -m evals.compare runs/quickstart/{standard,hc,mhc,grid} --out runs/quickstart/report
    python -m evals.compare runs/standard runs/hc runs/mhc runs/grid    # -> runs/compare/
    python -m evals.compare runs/sweep/* --out runs/sweep/report --probe   # + offline probe of hf/

Runs are grouped by residual mode (config.yaml `model.residual_mode`, else hf/config.json); with
several seeds per mode the curves are the mean with a +- 1 std band. Writes to --out:
loss.png, grad_norm.png, spikes.png, amax.png, vanished.png (those with data), report.md,
report.html and summary.json. Without --out: `compare/` next to the runs (in the folder that
holds them all).

Table columns (per mode, mean +- std over seeds; definitions in docs/stability.md):
final train loss = mean of the last `--final-window` logged training losses; final val loss =
last `val_loss`; loss / grad-norm spikes = the logged cumulative `spike/*_count` at the last line
(recomputed from the logged series with the run's spike rule when the run has no such column);
spike score = % of evaluated steps that were loss spikes; max Amax fwd/bwd = max over probe steps
of `amax/{fwd,bwd}/composite`; vanished ratio and grad std = last probe; tokens/s = median of
`tokens_per_s`. Probe values missing from the log come from RUN_DIR/stability.json when present
(`--probe` computes it).

Each run directory counts once: the same directory given twice (also via `.`/`..` or a symlink)
is refused. Runs of one mode whose logs end at different steps are still averaged, with a warning
naming each run and its last step (the curves then cover the steps all of them logged). Unreadable
metrics.jsonl lines are skipped with a warning; a run without any readable record is an error.
Errors exit with status 2.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mhc_lm.metrics.spikes import SpikeDetector  # noqa: E402
from mhc_lm.config_utils import flatten_dict, positive_int  # noqa: E402
from mhc_lm.train.run_log import read_metrics  # noqa: E402

MODE_ORDER = ("standard", "hc", "mhc", "grid")
EPS_KEYS = ("vanished/1e-04", "vanished/1e-05", "vanished/1e-06", "vanished/1e-07")
BACKBONE_KEYS = tuple(k.replace("vanished/", "vanished_backbone/") for k in EPS_KEYS)  # without mixing params


@dataclass
class Run:
    path: Path
    mode: str
    seed: int
    records: list[dict]
    metrics_config: dict = field(default_factory=dict)
    stability: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    diverged: str | None = None  # the run's DIVERGED note, if training diverged

    @property
    def last_step(self) -> int:
        return max(int(r["step"]) for r in self.records)

    def series(self, key: str, train_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the numeric entries `key`, last value per step."""
        by_step = {}
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (not train_only or "loss" in r):
                by_step[int(r["step"])] = float(v)
        steps = np.array(sorted(by_step), dtype=np.int64)
        return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


# ---------------------------------------------------------------- loading
def read_jsonl(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; an unreadable line is skipped with a warning naming it, a file
    without any record (a JSON object with a "step") is an error (SystemExit naming it)."""
    bad_lines: list[tuple[int, str]] = []
    records = [rec for rec in read_metrics(path, on_bad=lambda i, line: bad_lines.append((i, line)))
               if "step" in rec]
    if not records:
        if bad_lines:
            i, line = bad_lines[0]
            detail = (f"{len(bad_lines)} unreadable line(s), the first is line {i}: "
                      f"{line[:40] + ('...' if len(line) > 40 else '')!r}")
        else:
            detail = "no JSON object with a \"step\" in it"
        raise SystemExit(f"{path}: no readable metrics records ({detail}); is it the metrics.jsonl of a "
                         "training run?")
    for i, _ in bad_lines:
        warnings.warn(f"{path}:{i}: not a JSON object, skipped (a line cut by a crash?)", stacklevel=3)
    return records


def load_run(path: Path) -> Run:
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"{path}: no metrics.jsonl; pass run directories written by launch/pretrain.py")
    cfg = {}
    if (path / "config.yaml").is_file():
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    mode = (cfg.get("model") or {}).get("residual_mode")
    if mode is None and (path / "hf" / "config.json").is_file():
        mode = json.loads((path / "hf" / "config.json").read_text()).get("residual_mode")
    if mode is None:
        raise SystemExit(f"{path}: residual mode unknown (no model.residual_mode in config.yaml and no "
                         "hf/config.json); is this a run directory?")
    seed = int((cfg.get("train") or {}).get("seed") or 0)
    stability = {}
    if (path / "stability.json").is_file():
        stability = json.loads((path / "stability.json").read_text()).get("metrics", {})
    diverged = (path / "DIVERGED").read_text().strip() or "diverged" if (path / "DIVERGED").is_file() else None
    return Run(path, str(mode), seed, read_jsonl(metrics), cfg.get("metrics") or {}, stability, cfg, diverged)


def check_distinct(run_dirs: list[Path]) -> None:
    """Refuse a run directory given twice (after resolving `.`, `..` and symlinks): it would count as two seeds."""
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            same = f"{d}" if str(seen[key]) == str(d) else f"{seen[key]} and {d} (both {key})"
            raise SystemExit(f"run directory given twice: {same}; each run counts as one seed, pass it once")
        seen[key] = Path(d)


def warn_uneven_lengths(groups: dict[str, list[Run]]) -> None:
    """Warn when the runs averaged as seeds of one mode end at different steps."""
    for mode, runs in groups.items():
        ends = [(r.path, r.last_step) for r in runs]
        if len({s for _, s in ends}) > 1:
            warnings.warn(f"{mode}: the runs averaged as its seeds end at different steps ("
                          + ", ".join(f"{p}: step {s}" for p, s in ends)
                          + "); final values mix training lengths, curves cover only the steps all logged",
                          stacklevel=3)


# settings that may differ between the seeds of one mode (the rest must match to average them)
SEED_FREE = ("train.seed", "data.seed", "run_dir", "train.max_steps", "train.eval_every", "train.eval_batches",
             "train.export_hf", "train.progress_bar", "checkpoint.", "logging.", "metrics.")


def warn_mixed_settings(groups: dict[str, list[Run]]) -> None:
    """Warn when the runs averaged as seeds of one mode differ in more than their seed (e.g. another
    lr), and name every diverged run: its numbers are averaged with the others' like any seed."""
    for mode, runs in groups.items():
        flats = [flatten_dict(r.config) for r in runs if r.config]
        shared = set.intersection(*(set(f) for f in flats)) if flats else set()  # keys older configs lack: skipped
        keys = sorted(k for k in shared if not k.startswith(SEED_FREE) and k != "model.residual_mode")
        differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
        if differ:
            shown = ", ".join(differ[:6]) + (", ..." if len(differ) > 6 else "")
            warnings.warn(f"{mode}: the runs averaged as its seeds differ in more than the seed ({shown}); "
                          "compare them as separate groups (one compare call per setting)", stacklevel=3)
        for r in runs:
            if r.diverged:
                warnings.warn(f"{mode}: {r.path} diverged ({r.diverged[:200]}); it is averaged with the other seeds "
                              "up to where it stopped", stacklevel=3)


def group(runs: list[Run]) -> dict[str, list[Run]]:
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (order.get(r.mode, 99), r.mode, r.seed)):
        groups.setdefault(run.mode, []).append(run)
    return groups


# ---------------------------------------------------------------- per-run summary
def spike_detector(c: dict) -> SpikeDetector:
    """The run's spike rule from its `metrics` config section (defaults as MetricsConfig)."""
    window = int(c.get("spike_window", 128))
    return SpikeDetector(window=window, sigma=float(c.get("spike_sigma", 6.0)),
                         min_history=int(c.get("spike_min_history") or window))


def spike_stats(run: Run, name: str) -> tuple[float, float]:
    """(count, score %) of spikes in series `name` ("loss" or "grad_norm")."""
    steps, counts = run.series(f"spike/{name}_count")
    if len(counts):
        _, scores = run.series(f"spike/{name}_score")
        return counts[-1], (scores[-1] if len(scores) else float("nan"))
    det = spike_detector(run.metrics_config)
    for v in run.series(name, train_only=True)[1]:
        det.update(v)
    return float(det.count), det.score


def spike_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative loss-spike count per logged step (logged column, else recomputed)."""
    steps, counts = run.series("spike/loss_count")
    if len(counts):
        return steps, counts
    det = spike_detector(run.metrics_config)
    steps, values = run.series("loss", train_only=True)
    counts = []
    for v in values:
        det.update(v)
        counts.append(det.count)
    return steps, np.array(counts, dtype=np.float64)


def probe_value(run: Run, key: str, how: str) -> float:
    """Logged probe value (last or max over steps), else the offline stability.json value, else nan."""
    _, values = run.series(key)
    values = values[np.isfinite(values)]
    if len(values):
        return float(values.max() if how == "max" else values[-1])
    return float(run.stability.get(key, float("nan")))


def summarize_run(run: Run, final_window: int = 10) -> dict[str, float]:
    _, loss = run.series("loss", train_only=True)
    _, val = run.series("val_loss")
    _, tps = run.series("tokens_per_s")
    spikes, score = spike_stats(run, "loss")
    gn_spikes, _ = spike_stats(run, "grad_norm")
    out = {
        "final_train_loss": float(np.mean(loss[-final_window:])) if len(loss) else float("nan"),
        "final_val_loss": float(val[-1]) if len(val) else float("nan"),
        "loss_spikes": spikes, "spike_score": score, "grad_norm_spikes": gn_spikes,
        "max_amax_fwd": probe_value(run, "amax/fwd/composite", "max"),
        "max_amax_bwd": probe_value(run, "amax/bwd/composite", "max"),
    }
    for key in EPS_KEYS + BACKBONE_KEYS:
        out[key] = probe_value(run, key, "last")
    out["grad_std"] = probe_value(run, "grad_std", "last")
    out["tokens_per_s"] = float(np.median(tps)) if len(tps) else float("nan")
    return out


def summarize(groups: dict[str, list[Run]], final_window: int = 10) -> dict[str, dict]:
    """{mode: {"runs": [...], "seeds": [...], metric: {"mean", "std", "values"}}}."""
    table = {}
    for mode, runs in groups.items():
        per_run = [summarize_run(r, final_window) for r in runs]
        row: dict = {"runs": [str(r.path) for r in runs], "seeds": [r.seed for r in runs],
                     "diverged": [str(r.path) for r in runs if r.diverged]}
        for key in per_run[0]:
            vals = np.array([p[key] for p in per_run], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            row[key] = {"mean": float(finite.mean()) if len(finite) else float("nan"),
                        "std": float(finite.std()) if len(finite) else float("nan"),
                        "values": [float(v) for v in vals]}
        table[mode] = row
    return table


# ---------------------------------------------------------------- plots
def band(runs: list[Run], key: str, train_only: bool = False, curve=None):
    """(steps, mean, std) over the runs on the steps all of them logged; None without data."""
    series = [curve(r) if curve else r.series(key, train_only) for r in runs]
    series = [s for s in series if len(s[0])]
    if not series:
        return None
    common = series[0][0]
    for steps, _ in series[1:]:
        common = np.intersect1d(common, steps)
    if not len(common):
        return None
    stack = np.stack([vals[np.searchsorted(steps, common)] for steps, vals in series])  # (seeds, steps)
    return common, stack.mean(0), stack.std(0)


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def plot_panels(groups, out: Path, name: str, title: str, panels: list[tuple], logy: bool = False):
    """One PNG with a panel per (key, panel title[, train_only, curve]); skipped when no panel has data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [[(mode, band(runs, p[0], *p[2:])) for mode, runs in groups.items()] for p in panels]
    if not any(b is not None for panel in data for _, b in panel):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel, spec in zip(axes[0], data, panels):
        for i, (mode, b) in enumerate(panel):
            if b is None:
                continue
            steps, mean, std = b
            color = f"C{MODE_ORDER.index(mode) if mode in MODE_ORDER else i + 4}"
            seeds = len(groups[mode])
            ax.plot(steps, mean, color=color, label=f"{mode} (n={seeds})", marker="o" if len(steps) < 12 else None)
            if seeds > 1:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set(title=spec[1], xlabel="step")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(title)
    fig.tight_layout()
    path = _save(fig, out / f"{name}.png")
    plt.close(fig)
    return path


def make_plots(groups, out: Path) -> list[Path]:
    plots = [
        plot_panels(groups, out, "loss", "loss (mean +- std over seeds)",
                    [("loss", "train loss", True), ("val_loss", "validation loss")]),
        plot_panels(groups, out, "grad_norm", "global gradient norm (pre-clipping)",
                    [("grad_norm", "grad norm", True)], logy=True),
        plot_panels(groups, out, "spikes", "loss spikes (mean + 6 sigma of the previous 128 steps)",
                    [("spike/loss_count", "cumulative loss spikes", False, spike_curve),
                     ("loss_volatility", "loss volatility")]),
        plot_panels(groups, out, "amax", "Amax gain of the composite residual mixing (log scale)",
                    [("amax/fwd/composite", "forward (max |row sum|)"),
                     ("amax/bwd/composite", "backward (max |column sum|)")], logy=True),
        plot_panels(groups, out, "vanished", "vanished-gradient ratio |g| < eps (probe batch)",
                    [(k, f"eps = {k.split('/')[1]}") for k in EPS_KEYS]),
    ]
    return [p for p in plots if p is not None]


# ---------------------------------------------------------------- report
COLUMNS = [
    ("final_train_loss", "final train loss", "{:.4f}"), ("final_val_loss", "final val loss", "{:.4f}"),
    ("loss_spikes", "loss spikes", "{:.1f}"), ("spike_score", "spike score %", "{:.3f}"),
    ("grad_norm_spikes", "grad-norm spikes", "{:.1f}"),
    ("max_amax_fwd", "max Amax fwd", "{:.4g}"), ("max_amax_bwd", "max Amax bwd", "{:.4g}"),
    *[(k, f"vanished {k.split('/')[1]} %", "{:.3f}") for k in EPS_KEYS],
    *[(k, f"backbone vanished {k.split('/')[1]} %", "{:.3f}") for k in BACKBONE_KEYS],
    ("grad_std", "grad std", "{:.3e}"), ("tokens_per_s", "tokens/s", "{:.0f}"),
]
PERCENT = set(EPS_KEYS + BACKBONE_KEYS)


def cell(stat: dict, fmt: str, percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    mean, std = stat["mean"] * scale, stat["std"] * scale
    if not math.isfinite(mean):
        return "n/a"
    text = fmt.format(mean)
    if len(stat["values"]) > 1 and math.isfinite(std):
        text += " ± " + fmt.format(std)
    return text


def table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    header = ["mode", "seeds"] + [c[1] for c in COLUMNS]
    rows = [[mode, str(len(row["seeds"]))] + [cell(row[k], f, k in PERCENT) for k, _, f in COLUMNS]
            for mode, row in summary.items()]
    return header, rows


def write_reports(summary: dict, plots: list[Path], out: Path, runs: list[Run]) -> None:
    header, rows = table_rows(summary)
    md = ["# Residual-mode comparison", "",
          f"{len(runs)} runs; mean ± std over seeds. Definitions: docs/stability.md. "
          "Amax is 1 by definition for standard and grid (identity residual / mean merges).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Runs", ""] + [f"- `{r.path}`: {r.mode}, seed {r.seed}, {len(r.records)} log lines"
                                 + (f", **diverged**: {r.diverged[:200]}" if r.diverged else "") for r in runs]
    md += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    _write_text(out / "report.md", "\n".join(md) + "\n")

    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    imgs = "".join(f'<figure><img src="{esc(p.name)}" alt="{esc(p.stem)}"><figcaption>{esc(p.stem)}</figcaption>'
                   "</figure>" for p in plots)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>mhc-lm residual-mode comparison</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>Residual-mode comparison</h1><p>{len(runs)} runs; mean ± std over seeds.</p>"
            f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>{imgs}</body></html>\n")
    _write_text(out / "report.html", page)
    _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def compare(run_dirs: list[Path], out: Path, final_window: int = 10, probe: bool = False) -> dict:
    """Load, (optionally probe,) plot and report; returns the per-mode summary."""
    if not run_dirs:
        raise SystemExit("no run directories given")
    if final_window < 1:
        raise SystemExit(f"final window must be >= 1 training losses (got {final_window})")
    check_distinct(run_dirs)
    if probe:
        from evals.stability import run_stability

        for d in run_dirs:
            if not (Path(d) / "stability.json").is_file() and (Path(d) / "hf" / "config.json").is_file():
                run_stability(Path(d))
    runs = [load_run(Path(d)) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    groups = group(runs)
    warn_uneven_lengths(groups)
    warn_mixed_settings(groups)
    summary = summarize(groups, final_window)
    plots = make_plots(groups, out)
    write_reports(summary, plots, out, runs)
    return summary


def default_out(run_dirs: list[Path]) -> Path:
    """`compare/` in the deepest folder that holds every run (never inside a run itself)."""
    dirs = [Path(d).resolve() for d in run_dirs]
    common = Path(os.path.commonpath(dirs))
    if common in dirs:
        common = common.parent
    return common / "compare"


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder for PNGs and reports (default: compare/ in the folder holding the runs)")
    parser.add_argument("--final-window", type=positive_int, default=10,
                        help="training losses averaged for 'final' (>= 1; default %(default)s)")
    parser.add_argument("--probe", action="store_true",
                        help="run evals.stability on runs without stability.json (needs hf/ and the prepared data)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = default_out(args.run_dirs)
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning  # one line per warning on stderr (restored on exit)
        try:
            summary = compare(args.run_dirs, args.out, args.final_window, args.probe)
        except SystemExit as err:
            if not isinstance(err.code, str):
                raise
            print(f"error: {err.code}", file=sys.stderr)  # a bad run directory or argument: one line, status 2
            return 2
    header, rows = table_rows(summary)
    for r in rows:
        print("  ".join(f"{h}={c}" for h, c in zip(header, r)))
    print(f"[mhc-lm] report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
