"""The comparison's plots: curves are the mean over a group's seeds with a +- 1 sample-std band
(ddof = 1, only with >= 2 seeds) on the steps every seed logged; legends give the seed count."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .load import MODE_ORDER, Run
from .summary import BACKBONE_KEYS, EPS_KEYS, grad_norm_extremes, grad_norm_spike_curve, spike_curve, spike_settings

IDENTITY_MODES = ("standard", "grid")  # composite Amax is 1 by definition (identity residual / mean merges)
AMAX_FLOOR = 0.5  # the Amax axis never zooms closer than [0.5, 2]: 0.99999 must not look far from 1


@dataclass
class Panel:
    key: str
    title: str
    train_only: bool = False
    curve: Callable[[Run], tuple[np.ndarray, np.ndarray]] | None = None
    scale: float = 1.0  # e.g. 100 for ratios shown in %
    logy: bool = False
    amax: bool = False  # floor the axis, draw modes that are 1 by definition faintly
    armed: bool = False  # shade the steps before the spike detector is armed; no curve there
    early_grad_norm: bool = False  # write each group's largest grad norm of those steps into the shading


def band(runs: list[Run], key: str, train_only: bool = False, curve=None):
    """(steps, mean, std over seeds (ddof = 1; None with one seed)) on the steps all runs logged; None without data."""
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
    return common, stack.mean(0), (stack.std(0, ddof=1) if len(stack) > 1 else None)


def armed_step(runs: list[Run]) -> int:
    """First step at which every run's spike detector can fire (its history window is full)."""
    return max(spike_settings(r.metrics_config)[2] for r in runs)


def _color(label: str, runs: list[Run], i: int) -> str:
    mode = runs[0].mode
    return f"C{MODE_ORDER.index(mode) if mode in MODE_ORDER and label == mode else 4 + i}"


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def _draw(ax, groups: dict[str, list[Run]], spec: Panel) -> bool:
    """Draw one panel; False when no group has data for it."""
    drawn, lows, highs = False, [], []
    for i, (label, runs) in enumerate(groups.items()):
        b = band(runs, spec.key, spec.train_only, spec.curve)
        if b is None:
            continue
        steps, mean, std = b
        mean = mean * spec.scale
        std = None if std is None else std * spec.scale
        if spec.armed:
            keep = steps >= armed_step(runs)
            steps, mean, std = steps[keep], mean[keep], (None if std is None else std[keep])
            if not len(steps):
                continue
        faint = spec.amax and runs[0].mode in IDENTITY_MODES
        seeds = len(runs)
        name = f"{label} ({seeds} seed{'s' if seeds != 1 else ''}{', 1 by definition' if faint else ''})"
        color = _color(label, runs, i)
        ax.plot(steps, mean, color=color, label=name, alpha=0.45 if faint else 1.0, linestyle="--" if faint else "-",
                marker="o" if len(steps) < 12 else None)
        if std is not None:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.1 if faint else 0.2, linewidth=0)
        finite = mean[np.isfinite(mean)]
        if len(finite):
            lows.append(finite.min())
            highs.append(finite.max())
        drawn = True
    if spec.armed:
        window = max(armed_step(runs) for runs in groups.values())
        ax.axvspan(0, window, color="gray", alpha=0.15, linewidth=0,
                   label=f"detector not armed (first {window} steps)")
        if spec.early_grad_norm:  # what the detector cannot count: the warm-up excursions
            maxima = [(label, max(grad_norm_extremes(r)[1] for r in runs)) for label, runs in groups.items()]
            text = "max grad norm here:\n" + "\n".join(f"{label} {m:.3g}" for label, m in maxima if np.isfinite(m))
            ax.text(0.02, 0.5, text, transform=ax.transAxes, fontsize=7, va="center", color="dimgray")
    if spec.logy:
        ax.set_yscale("log")
    if spec.amax and lows:
        low, high = min(lows), max(highs)
        ax.set_ylim(min(AMAX_FLOOR, low / 1.5) if low > 0 else AMAX_FLOOR, max(2.0, high * 1.5))
    return drawn


def plot_panels(groups: dict[str, list[Run]], out: Path, name: str, title: str, panels: list[Panel]) -> Path | None:
    """One PNG with a panel per spec; None (no file) when no panel has data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    any_data = False
    for ax, spec in zip(axes[0], panels):
        has = _draw(ax, groups, spec)
        any_data |= has
        ax.set(title=spec.title, xlabel="step")
        ax.grid(alpha=0.3)
        if has:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    path = None
    if any_data:
        # wrapped to the figure's width: a one-panel figure (grad_norm.png) is narrower than its title
        fig.suptitle(textwrap.fill(title, width=60 * len(panels)), fontsize=11)
        fig.tight_layout()
        path = _save(fig, out / f"{name}.png")
    plt.close(fig)
    return path


def streams_plot(groups: dict[str, list[Run]], out: Path) -> Path | None:
    """hc / mhc stream telemetry of the probe (mhc_lm/metrics/streams.py), next to Amax; None without it."""
    return plot_panels(groups, out, "streams", "hc / mhc streams and H_res (mean over layers; distances normalised: "
                       "I and J/n are 1 apart)",
                       [Panel("streams/cos_dist/mean", "stream diversity: mean pairwise cosine distance"),
                        Panel("streams/eff_rank/mean", "effective rank of the n streams"),
                        Panel("h_res/dist_identity/mean", "H_res distance from I"),
                        Panel("h_res/dist_uniform/mean", "H_res distance from J/n"),
                        Panel("h_res/composite_dist_uniform", "composite product: distance from J/n")])


def band_note_for(groups: dict[str, list[Run]]) -> str:
    """What the shading means: a band only for groups with >= 2 seeds (1 seed: the run's own curve)."""
    seeds = [len(runs) for runs in groups.values()]
    if max(seeds) < 2:
        return "1 seed per group: the run's curve, no band"
    if min(seeds) < 2:
        return "mean over seeds, band = ± 1 sample std where a group has >= 2 seeds"
    return "mean over seeds, band = ± 1 sample std"


def make_plots(groups: dict[str, list[Run]], out: Path) -> list[Path]:
    every = [r for runs in groups.values() for r in runs]
    window, sigma, _ = spike_settings(every[0].metrics_config)
    has_backbone = any(len(r.series(BACKBONE_KEYS[0])[0]) or BACKBONE_KEYS[0] in r.stability for r in every)
    vanished_keys, which = (BACKBONE_KEYS, "backbone (without the hc/mhc mixing parameters)") if has_backbone else (
        EPS_KEYS, "all parameters (no backbone ratio logged; mHC's raw ratio is inflated by its phi gradients)")
    band_note = band_note_for(groups)
    plots = [
        plot_panels(groups, out, "loss", f"loss ({band_note})",
                    [Panel("loss", "train loss", train_only=True), Panel("val_loss", "validation loss")]),
        plot_panels(groups, out, "grad_norm", f"global gradient norm, pre-clipping ({band_note})",
                    [Panel("grad_norm", "grad norm", train_only=True, logy=True)]),
        plot_panels(groups, out, "spikes", f"spikes: > mean + {sigma:g} sigma of the previous {window} steps "
                    f"({band_note})",
                    [Panel("spike/loss_count", "cumulative loss spikes", curve=spike_curve, armed=True),
                     Panel("spike/grad_norm_count", "cumulative grad-norm spikes", curve=grad_norm_spike_curve,
                           armed=True, early_grad_norm=True),
                     Panel("loss_volatility", "loss volatility")]),
        plot_panels(groups, out, "amax", "Amax gain of the composite residual mixing (log scale; 1 = no gain)",
                    [Panel("amax/fwd/composite", "forward (max |row sum|)", logy=True, amax=True),
                     Panel("amax/bwd/composite", "backward (max |column sum|)", logy=True, amax=True)]),
        streams_plot(groups, out),
        plot_panels(groups, out, "vanished", f"vanished-gradient ratio |g| < eps in %, {which}",
                    [Panel(k, f"eps = {k.split('/')[1]} (%)", scale=100.0) for k in vanished_keys]),
    ]
    return [p for p in plots if p is not None]
