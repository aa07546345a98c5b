"""Per-run numbers (final losses, spike counts, Amax, vanished ratios, tokens/s) and per-group
statistics over seeds, with Welch tests against the baseline group."""

from __future__ import annotations

import numpy as np

from mhc_lm.metrics.spikes import SpikeDetector

from .load import Run
from .stats import describe, welch

EPS_KEYS = ("vanished/1e-04", "vanished/1e-05", "vanished/1e-06", "vanished/1e-07")
BACKBONE_KEYS = tuple(k.replace("vanished/", "vanished_backbone/") for k in EPS_KEYS)  # without mixing params
LOSS_KEYS = ("final_train_loss", "final_val_loss")  # diverged runs are left out of these statistics
STABILITY_KEYS = ("max_amax_fwd", "loss_spikes", "grad_norm_spikes", "n_skips", "n_rewinds", "max_grad_norm",
                  "early_max_grad_norm")  # the report's stability findings, in its order
TESTED = ("final_val_loss", *STABILITY_KEYS, "tokens_per_s")  # Welch vs baseline
EVENTS = {"skip": "n_skips", "rewind": "n_rewinds"}
"""metrics.jsonl rows {"step", "event": "skip" | "rewind", "value", "threshold", "batches_skipped"} of the
spike policy, counted per run (0 for a run that logged none)."""


def spike_settings(c: dict) -> tuple[int, float, int]:
    """(window, sigma, min_history) of a run's `metrics` config section (defaults as MetricsConfig)."""
    window = int(c.get("spike_window", 128))
    return window, float(c.get("spike_sigma", 6.0)), int(c.get("spike_min_history") or window)


def spike_detector(c: dict) -> SpikeDetector:
    window, sigma, min_history = spike_settings(c)
    return SpikeDetector(window=window, sigma=sigma, min_history=min_history)


def spike_curve(run: Run, name: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """Cumulative spike count of series `name` ("loss" or "grad_norm") per logged step: the logged
    `spike/NAME_count` column, else recomputed from the logged series with the run's rule."""
    steps, counts = run.series(f"spike/{name}_count")
    if len(counts):
        return steps, counts
    det = spike_detector(run.metrics_config)
    steps, values = run.series(name, train_only=True)
    out = []
    for v in values:
        det.update(v)
        out.append(det.count)
    return steps, np.array(out, dtype=np.float64)


def grad_norm_spike_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    return spike_curve(run, "grad_norm")


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


def event_counts(run: Run) -> dict[str, float]:
    """{"n_skips", "n_rewinds"}: the spike policy's event rows of the run."""
    out = {key: 0.0 for key in EVENTS.values()}
    for r in run.records:
        key = EVENTS.get(r.get("event"))
        if key is not None:
            out[key] += 1
    return out


def grad_norm_extremes(run: Run) -> tuple[float, float]:
    """(max grad norm of the run, max grad norm before the spike detector is armed), nan without data.
    The detector counts nothing in its first min_history steps, so an excursion there (a warm-up spike)
    shows only in the second number."""
    _, values = run.series("grad_norm", train_only=True)
    early = values[: spike_settings(run.metrics_config)[2]]

    def finite_max(a):
        a = a[np.isfinite(a)]
        return float(a.max()) if len(a) else float("nan")

    return finite_max(values), finite_max(early)


def probe_value(run: Run, key: str, how: str) -> float:
    """Logged probe value (last or max over steps), else the offline stability.json value, else nan."""
    _, values = run.series(key)
    values = values[np.isfinite(values)]
    if len(values):
        return float(values.max() if how == "max" else values[-1])
    return float(run.stability.get(key, float("nan")))


def event_counts(run: Run) -> dict[str, float]:
    """n_skips / n_rewinds: the train.on_spike action rows of the run's metrics.jsonl (mhc_lm/train/spike_policy.py);
    0 for a run without any (on_spike: none, or nothing spiked)."""
    kinds = [r.get("event") for r in run.records]
    return {"n_skips": float(kinds.count("skip")), "n_rewinds": float(kinds.count("rewind"))}


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
    out["max_grad_norm"], out["early_max_grad_norm"] = grad_norm_extremes(run)
    out.update(event_counts(run))
    out["tokens_per_s"] = float(np.median(tps)) if len(tps) else float("nan")
    out.update(event_counts(run))
    return out


def summarize(groups: dict[str, list[Run]], final_window: int = 10, baseline: str | None = None) -> dict[str, dict]:
    """{group: {"runs", "seeds", "diverged", metric: {"n", "mean", "std", "ci_low", "ci_high", "values"},
    "vs_baseline": {metric: Welch fields}}}. std is the sample std (ddof = 1), the interval a 95%
    t-interval; both nan for one seed. Final losses of diverged runs are kept in "values" but left
    out of the statistics (they stopped early); Welch tests are against group `baseline` for TESTED."""
    table = {}
    for name, runs in groups.items():
        per_run = [summarize_run(r, final_window) for r in runs]
        row: dict = {"runs": [str(r.path) for r in runs], "seeds": [r.seed for r in runs],
                     "diverged": [str(r.path) for r in runs if r.diverged]}
        for key in per_run[0]:
            values = [p[key] for p in per_run]
            used = [v for v, r in zip(values, runs) if not (key in LOSS_KEYS and r.diverged)]
            d = describe(used)
            row[key] = {"n": d.n, "mean": d.mean, "std": d.std, "ci_low": d.ci_low, "ci_high": d.ci_high,
                        "values": [float(v) for v in values]}
        table[name] = row
    if baseline in table:
        base = table[baseline]
        for name, row in table.items():
            if name != baseline:
                row["vs_baseline"] = {k: welch(used_values(row, k, groups[name]),
                                               used_values(base, k, groups[baseline])).to_dict() for k in TESTED}
    return table


def used_values(row: dict, key: str, runs: list[Run]) -> list[float]:
    """The values of `key` the statistics use (losses of diverged runs left out)."""
    return [v for v, r in zip(row[key]["values"], runs) if not (key in LOSS_KEYS and r.diverged)]
