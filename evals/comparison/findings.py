"""The report's stability findings: one line per stability metric (Amax, loss and grad-norm spikes,
skipped steps and rewinds of the spike policy, max grad norm, and the largest grad norm before the
spike detector is armed), each group's value with its Welch test against the baseline, or the
reason there is none ("1 seed: no test", "no spread: no test")."""

from __future__ import annotations

import math

from .stats import ALPHA, format_p

FINDINGS = [  # (summary key, name, format, what it means)
    ("max_amax_fwd", "Amax", "{:.4g}", "max composite forward gain of the residual mixing; 1 = no amplification"),
    ("loss_spikes", "loss spikes", "{:.3g}", "steps above mean + k sigma of the previous window"),
    ("grad_norm_spikes", "grad-norm spikes", "{:.3g}", "the same rule on the gradient norm"),
    ("n_skips", "skipped steps", "{:.3g}", "batches the spike policy skipped"),
    ("n_rewinds", "rewinds", "{:.3g}", "rewinds to a checkpoint by the spike policy"),
    ("max_grad_norm", "max grad norm", "{:.4g}", "largest pre-clipping gradient norm of the run"),
    ("early_max_grad_norm", "max grad norm before the spike detector is armed", "{:.4g}",
     "its first {window} steps, where no spike is counted"),
]


def value_text(stat: dict, fmt: str) -> str:
    if not math.isfinite(stat["mean"]):
        return "n/a"
    text = fmt.format(stat["mean"])
    return text + (f" ± {fmt.format(stat['std'])}" if stat["n"] > 1 and math.isfinite(stat["std"]) else "")


def welch_text(test: dict) -> str:
    """The Welch result of one metric, or why there is none."""
    if test["n"] < 2 or test["n_baseline"] < 2:
        return "1 seed: no test"
    if not math.isfinite(test["p"]):
        return "no spread: no test"
    return ("significant: " if test["p"] < ALPHA else "not significant: ") + format_p(test["p"])


def has_data(summary: dict, key: str) -> bool:
    return any(key in row and math.isfinite(row[key]["mean"]) for row in summary.values())


def finding_lines(summary: dict, baseline: str, window: int | None = None) -> list[str]:
    """One markdown line per stability metric with data: `**name** (meaning): base v; group v (Δ d, test); ...`."""
    lines = []
    for key, name, fmt, meaning in FINDINGS:
        if not has_data(summary, key):
            continue
        parts = []
        for group, row in summary.items():
            text = f"{group} {value_text(row[key], fmt)}"
            test = row.get("vs_baseline", {}).get(key)
            if group != baseline and test is not None and math.isfinite(test["diff"]):
                text += f" (Δ {test['diff']:+.3g}, {welch_text(test)})"
            parts.append(text)
        lines.append(f"**{name}** ({meaning.format(window=window if window is not None else 'W')}): "
                     + "; ".join(parts) + ".")
    return lines


def significant(summary: dict, baseline: str) -> list[str]:
    """`group: more/fewer <metric> than baseline (p)` for every stability metric that differs at ALPHA."""
    out = []
    for group, row in summary.items():
        for key, name, _, _ in FINDINGS:
            test = row.get("vs_baseline", {}).get(key)
            if test is not None and math.isfinite(test["p"]) and test["p"] < ALPHA:
                out.append(f"{group} {'higher' if test['diff'] > 0 else 'lower'} {name} than {baseline} "
                           f"({format_p(test['p'])})")
    return out


def summary_line(summary: dict, baseline: str) -> str:
    """The answer to "which mode was more stable, and is it significant?" in one sentence."""
    found = significant(summary, baseline)
    if found:
        return "Stability differences with a significant Welch test: " + "; ".join(found) + "."
    seeds = min(len(row["seeds"]) for row in summary.values())
    if seeds < 2:
        return ("No stability difference can be tested: some group has a single seed (values below, without tests; "
                "run >= 3 seeds per group).")
    return f"No stability metric differs significantly from {baseline} (Welch, α = {ALPHA})."
