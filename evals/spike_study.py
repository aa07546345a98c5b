"""Per-run table of a spike-policy study (docs/stability_study.md, section 4), read from finished runs.

    python -m evals.spike_study runs/stress_rewind/none/* runs/stress_rewind/rewind/*

One markdown row per run: mode, train.on_spike, seed, last logged step, diverged (and why, in
short), final val loss, loss / grad-norm spikes (the metrics callback's counts), n_skips /
n_rewinds (the policy's action rows), the steps rewound from, max composite Amax forward, and the
stream telemetry of the last probe (means over layers: stream cosine distance, effective rank,
H_res distance from I and from J/n, the composite's distance from J/n; mhc_lm/metrics/streams.py).
Then the same numbers per (mode, on_spike) group: mean and sample std (ddof = 1) over seeds (the
val loss over the runs that did not stop early, as in `evals.compare`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from evals.comparison.load import load_run
from mhc_lm.config_utils import ConfigError
from evals.comparison.summary import summarize_run

STREAM_KEYS = ("streams/cos_dist/mean", "streams/eff_rank/mean", "h_res/dist_identity/mean",
               "h_res/dist_uniform/mean", "h_res/composite_dist_uniform")
COLUMNS = ("final_val_loss", "loss_spikes", "grad_norm_spikes", "n_skips", "n_rewinds", "max_amax_fwd") + STREAM_KEYS
HEAD = ("val loss", "loss spikes", "gn spikes", "skips", "rewinds", "max Amax fwd", "stream cos dist",
        "stream eff rank", "d(H_res, I)", "d(H_res, J/n)", "d(composite, J/n)")


def _fmt(v: float) -> str:
    return "n/a" if not math.isfinite(v) else (f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e4 else f"{v:.3g}")


def run_row(path: Path) -> dict:
    run = load_run(path)
    s = summarize_run(run)
    for key in STREAM_KEYS:
        _, values = run.series(key)
        s[key] = float(values[-1]) if len(values) else float("nan")
    policy = run.setting("train.on_spike", "none")
    rewound = [int(r["step"]) for r in run.records if r.get("event") == "rewind"]
    why = "no"
    if run.diverged:
        why = "max_rewinds" if "max_rewinds" in run.diverged else "non-finite"
    return {"mode": run.mode, "policy": policy, "seed": run.seed, "steps": max(int(r["step"]) for r in run.records),
            "diverged": why, "rewound_at": rewound, **s}


def table(rows: list[dict]) -> str:
    out = ["| mode | on_spike | seed | steps | diverged | " + " | ".join(HEAD) + " | rewound at steps |",
           "|---|---|---:|---:|---|" + "---:|" * len(HEAD) + "---|"]
    for r in rows:
        out.append(f"| {r['mode']} | {r['policy']} | {r['seed']} | {r['steps']} | {r['diverged']} | "
                   + " | ".join(_fmt(r[k]) for k in COLUMNS) + f" | {', '.join(map(str, r['rewound_at'])) or '-'} |")
    return "\n".join(out)


def group_table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["policy"]), []).append(r)
    out = ["| mode | on_spike | seeds | diverged | " + " | ".join(HEAD) + " |", "|---|---|---:|---:|" + "---:|" * len(HEAD)]
    for (mode, policy), rs in groups.items():
        cells = []
        for key in COLUMNS:
            kept = [r for r in rs if key != "final_val_loss" or r["diverged"] == "no"]  # a stopped run's loss is early
            vals = np.array([r[key] for r in kept], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if not len(vals):
                cells.append("n/a")
                continue
            std = f" ± {_fmt(vals.std(ddof=1))}" if len(vals) > 1 else ""
            cells.append(_fmt(vals.mean()) + std)
        n_div = sum(r["diverged"] != "no" for r in rs)
        out.append(f"| {mode} | {policy} | {len(rs)} | {n_div} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    args = parser.parse_args(argv)
    try:
        rows = sorted((run_row(p) for p in args.runs if (p / "metrics.jsonl").is_file()),
                      key=lambda r: (r["mode"], r["policy"], r["seed"]))
    except ConfigError as err:  # a run directory that cannot be read (RunDirError names the file)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print("error: no run directory with a metrics.jsonl given", file=sys.stderr)
        return 2
    print(table(rows) + "\n\n" + group_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
