"""report.md / report.html / summary.json: a headline table and a plain-language verdict per group
(first), warnings, the Welch tests, then the detailed per-group table and the plots."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from scipy import stats as scipy_stats

from .findings import finding_lines, summary_line
from .load import Run
from .stats import ALPHA, CONFIDENCE, POWER, format_p, pooled_sd, seeds_needed
from .summary import BACKBONE_KEYS, EPS_KEYS, spike_settings, used_values

MIN_SEEDS = 3  # fewer: a warning (the t-interval of 2 seeds is 12.7 standard errors wide on each side)
TEST_NAMES = {"final_val_loss": "val loss", "loss_spikes": "loss spikes", "grad_norm_spikes": "grad-norm spikes",
              "max_amax_fwd": "max Amax fwd", "n_skips": "skipped steps", "n_rewinds": "rewinds",
              "max_grad_norm": "max grad norm", "early_max_grad_norm": "max grad norm before armed",
              "tokens_per_s": "tokens/s"}
COLUMNS = [
    ("final_train_loss", "final train loss", "{:.4f}"), ("final_val_loss", "final val loss", "{:.4f}"),
    ("loss_spikes", "loss spikes", "{:.1f}"), ("spike_score", "spike score %", "{:.3f}"),
    ("grad_norm_spikes", "grad-norm spikes", "{:.1f}"),
    ("max_amax_fwd", "max Amax fwd", "{:.4g}"), ("max_amax_bwd", "max Amax bwd", "{:.4g}"),
    *[(k, f"vanished {k.split('/')[1]} %", "{:.3f}") for k in EPS_KEYS],
    *[(k, f"backbone vanished {k.split('/')[1]} %", "{:.3f}") for k in BACKBONE_KEYS],
    ("grad_std", "grad std", "{:.3e}"), ("max_grad_norm", "max grad norm", "{:.4g}"),
    ("early_max_grad_norm", "max grad norm before armed", "{:.4g}"), ("n_skips", "skips", "{:.3g}"),
    ("n_rewinds", "rewinds", "{:.3g}"), ("tokens_per_s", "tokens/s", "{:.0f}"),
]
PERCENT = set(EPS_KEYS + BACKBONE_KEYS)
HEADLINE = ["group", "seeds", "val loss ± 95% CI", "Δ val loss vs {base} [95% CI], p", "loss / grad-norm spikes",
            "max Amax fwd", "max grad norm", "skips / rewinds", "diverged", "tokens/s"]


def _f(x: float, fmt: str = "{:.4f}") -> str:
    return fmt.format(x) if math.isfinite(x) else "n/a"


def cell(stat: dict, fmt: str, percent: bool) -> str:
    """Detailed-table cell: mean ± sample std (ddof = 1); the value alone for one seed."""
    scale = 100.0 if percent else 1.0
    mean, std = stat["mean"] * scale, stat["std"] * scale
    if not math.isfinite(mean):
        return "n/a"
    return fmt.format(mean) + (" ± " + fmt.format(std) if stat["n"] > 1 and math.isfinite(std) else "")


def table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The detailed table, without the columns that are n/a in every group (not logged by any run)."""
    header = ["group", "seeds"] + [c[1] for c in COLUMNS]
    rows = [[name, str(len(row["seeds"]))] + [cell(row[k], f, k in PERCENT) for k, _, f in COLUMNS]
            for name, row in summary.items()]
    keep = [i for i in range(len(header)) if i < 2 or any(r[i] != "n/a" for r in rows)]
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows]


def empty_columns(summary: dict) -> list[str]:
    """Names of the detailed columns that table_rows drops (n/a everywhere)."""
    return [name for key, name, _ in COLUMNS if all(not math.isfinite(row[key]["mean"]) for row in summary.values())]


def headline_rows(summary: dict, baseline: str) -> tuple[list[str], list[list[str]]]:
    header = [h.format(base=baseline) for h in HEADLINE]
    rows = []
    for name, row in summary.items():
        val = row["final_val_loss"]
        if val["n"] >= 2:
            val_text = f"{_f(val['mean'])} ± {_f((val['ci_high'] - val['ci_low']) / 2)}"
        else:
            val_text = f"{_f(val['mean'])} (1 seed, no CI)" if val["n"] == 1 else "n/a"
        if name == baseline:
            delta = "baseline"
        elif "vs_baseline" not in row:
            delta = "n/a"
        else:
            w = row["vs_baseline"]["final_val_loss"]
            delta = (f"{w['diff']:+.4f} [{w['ci_low']:+.4f}, {w['ci_high']:+.4f}], {format_p(w['p'])}"
                     if math.isfinite(w["p"]) else (f"{w['diff']:+.4f} (no test: 1 seed)"
                                                    if math.isfinite(w["diff"]) else "n/a"))
        spikes = f"{_f(row['loss_spikes']['mean'], '{:.1f}')} / {_f(row['grad_norm_spikes']['mean'], '{:.1f}')}"
        events = f"{_f(row['n_skips']['mean'], '{:.3g}')} / {_f(row['n_rewinds']['mean'], '{:.3g}')}"
        tps = row["tokens_per_s"]["mean"]
        rows.append([name, str(len(row["seeds"])), val_text, delta, spikes, _f(row["max_amax_fwd"]["mean"], "{:.4g}"),
                     _f(row["max_grad_norm"]["mean"], "{:.4g}"), events,
                     f"{len(row['diverged'])}/{len(row['seeds'])}", f"{tps:,.0f}" if math.isfinite(tps) else "n/a"])
    return header, rows


PRACTICAL = {"max_amax_fwd": 0.01, "tokens_per_s": 0.05}
"""Smallest difference a verdict line calls out, relative to the baseline's mean: a Welch test finds mHC's
Amax (1 - 2e-5, Sinkhorn's finite convergence) 'different' from standard's 1 at p < 0.001, which means nothing."""


def practically_different(key: str, diff: float, base_mean: float) -> bool:
    tolerance = PRACTICAL.get(key)
    if tolerance is None or not math.isfinite(base_mean) or base_mean == 0:
        return True
    return abs(diff) >= tolerance * abs(base_mean)


def verdict(name: str, row: dict, base_row: dict, baseline: str, groups: dict[str, list[Run]],
            effect: float | None = None) -> str:
    """One plain-language line on the val loss of group `name` against the baseline, with a power estimate."""
    n, nb = row["final_val_loss"]["n"], base_row["final_val_loss"]["n"]
    seeds, diverged = len(row["seeds"]), len(row["diverged"])
    tail = f" {diverged} of {seeds} seeds diverged." if diverged else ""
    if n == 0 or nb == 0:
        who = name if n == 0 else baseline
        return f"**{name}**: no val-loss comparison: {who} has no finished seed with a val loss.{tail}"
    w = row["vs_baseline"]["final_val_loss"]
    if n < 2 or nb < 2:
        return (f"**{name}**: val loss {w['diff']:+.4f} vs {baseline} from a single seed on "
                f"{'this side' if n < 2 else 'the baseline side'}: no confidence interval or test; run >= "
                f"{MIN_SEEDS} seeds per group.{tail}")
    at = f"at {n} vs {nb} seeds" if n != nb else f"at {n} seeds"
    ci = f"95% CI [{w['ci_low']:+.4f}, {w['ci_high']:+.4f}]"
    if w["p"] < ALPHA:
        direction = "lower" if w["diff"] < 0 else "higher"
        text = (f"**{name}**: val loss {direction} than {baseline} by {abs(w['diff']):.4f} ({ci}, {format_p(w['p'])}) "
                f"{at}: a detectable difference.")
    else:
        target = abs(effect) if effect else abs(w["diff"])
        sd = pooled_sd(used_values(row, "final_val_loss", groups[name]),
                       used_values(base_row, "final_val_loss", groups[baseline]))
        need = seeds_needed(target, sd)
        if not target > 0:
            power = "the observed Δ is 0, so no seed estimate (set --effect to the difference you care about)"
        elif need is None:
            power = ("no seed estimate without spread between seeds" if not sd > 0 else
                     f"more than 1000 seeds per group would be needed to detect Δ = {target:.4f} at this spread")
        else:
            power = (f">= {need} seeds per group needed to detect Δ = {target:.4f} at this spread "
                     f"(std {sd:.4f}; {POWER:.0%} power, α = {ALPHA})")
        text = (f"**{name}**: no detectable difference in val loss from {baseline} {at} "
                f"({format_p(w['p'])}; Δ = {w['diff']:+.4f}, {ci}); {power}.")
    others = [f"{TEST_NAMES[k]} {t['diff']:+.4g} ({format_p(t['p'])})" for k, t in row["vs_baseline"].items()
              if k != "final_val_loss" and math.isfinite(t["p"]) and t["p"] < ALPHA
              and practically_different(k, t["diff"], base_row[k]["mean"])]
    if others:
        text += " Also different from the baseline: " + ", ".join(others) + "."
        if any(o.startswith(TEST_NAMES["tokens_per_s"]) for o in others):
            text += " (tokens/s depend on the machine's load while the runs ran; measure speed side by side with " \
                    "benchmarks/train_throughput.py.)"
    return text + tail


def warnings_for(summary: dict, groups: dict[str, list[Run]], baseline: str, baseline_note: str | None) -> list[str]:
    out = [baseline_note] if baseline_note else []
    few = [f"{name} ({len(row['seeds'])})" for name, row in summary.items() if len(row["seeds"]) < MIN_SEEDS]
    if few:
        t2 = scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, 1)
        out.append(f"Fewer than {MIN_SEEDS} seeds in {', '.join(few)}: the 95% intervals are wide (with 2 seeds the "
                   f"interval is ± {t2:.1f} standard errors) and only large differences are detectable.")
    single = [name for name, row in summary.items() if len(row["seeds"]) == 1]
    if single:
        out.append(f"{', '.join(single)}: a single seed, shown without a confidence interval or test.")
    short = {}
    for runs in groups.values():
        for r in runs:
            steps = int(r.setting("train.max_steps") or r.last_step)
            window = spike_settings(r.metrics_config)[2]
            if steps < 3 * window:
                short[(steps, window)] = short.get((steps, window), 0) + 1
    for (steps, window), count in sorted(short.items()):
        out.append(f"{count} run(s) of {steps} steps, fewer than 3 x the spike window ({window}): the spike "
                   f"detector is not armed for the first {window} steps ({100 * min(window, steps) / steps:.0f}% "
                   "of the run), so spike counts cover only the rest.")
    if any(row["diverged"] for row in summary.values()):
        out.append("Diverged runs are left out of the loss statistics (they stopped early); their spike and Amax "
                   "values are kept.")
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def stability_section(summary: dict, groups: dict[str, list[Run]], baseline: str) -> tuple[str, list[str]]:
    """(one-sentence answer, one line per stability metric) for the report's Stability section."""
    first = next(r for rs in groups.values() for r in rs)
    window = spike_settings(first.metrics_config)[2]
    return summary_line(summary, baseline), finding_lines(summary, baseline, window)


def welch_rows(summary: dict) -> tuple[list[list[str]], list[str]]:
    """(rows with a p-value, "group metric" of the tests that have none: fewer than 2 seeds or no spread)."""
    rows, untested = [], []
    for name, row in summary.items():
        for k, t in row.get("vs_baseline", {}).items():
            if not math.isfinite(t["p"]):
                untested.append(f"{name} {TEST_NAMES[k]}")
                continue
            rows.append([name, TEST_NAMES[k], _f(t["diff"], "{:+.4g}"), f"[{t['ci_low']:+.4g}, {t['ci_high']:+.4g}]",
                         format_p(t["p"]), f"{t['n']} vs {t['n_baseline']}"])
    return rows, untested


def build_markdown(summary: dict, groups: dict[str, list[Run]], baseline: str, notes: list[str],
                   verdicts: list[str], plots: list[Path]) -> str:
    runs = [r for rs in groups.values() for r in rs]
    md = ["# Residual-mode comparison", "",
          f"{len(runs)} runs in {len(summary)} groups; baseline **{baseline}**. Val loss ± the half-width of a 95% "
          "t-interval over seeds; Δ = group − baseline with the 95% interval and p-value of Welch's t-test. "
          "Definitions: docs/stability.md.", ""]
    md += _md_table(*headline_rows(summary, baseline))
    answer, findings = stability_section(summary, groups, baseline)
    md += ["", "## Stability", "", answer, ""] + [f"- {line}" for line in findings]
    md += ["", "## Verdict", ""] + [f"- {v}" for v in verdicts]
    if notes:
        md += ["", "## Warnings", ""] + [f"- {n}" for n in notes]
    tested, untested = welch_rows(summary)
    if tested or untested:
        md += ["", f"## Welch t-tests against {baseline}", ""]
    if tested:
        md += [f"p-values are per test, not corrected for the {len(tested)} tests made.", ""]
        md += _md_table(["group", "metric", "Δ (group − baseline)", "95% CI of Δ", "p", "seeds"], tested)
    if untested and tested:
        md += ["", f"No test (a group with 1 seed, or no spread in either group) for: {', '.join(untested)}."]
    elif untested:
        md += ["No Welch test could be made: every comparison has a group with 1 seed or no spread in either "
               "group (the values are in the tables above and below)."]
    md += ["", "## All metrics", "",
           "Mean ± sample std (ddof = 1) over seeds; one seed: its value alone. Amax is 1 by definition for standard "
           "and grid (identity residual / mean merges). Backbone vanished ratios leave out the hc/mhc mixing "
           "parameters (compare modes on those).", ""]
    md += _md_table(*table_rows(summary))
    empty = empty_columns(summary)
    if empty:
        md += ["", f"Not logged by any run (columns left out): {', '.join(empty)}."]
    md += ["", "## Runs", ""] + [f"- `{r.path}`: {r.group}, seed {r.seed}, {len(r.records)} log lines"
                                 + (f", **diverged**: {r.diverged[:200]}" if r.diverged else "") for r in runs]
    md += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(md) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def build_html(summary: dict, baseline: str, notes: list[str], verdicts: list[str], plots: list[Path],
               stability: tuple[str, list[str]] = ("", [])) -> str:
    esc = html.escape
    items = "".join(f"<li>{esc(v.replace('**', ''))}</li>" for v in verdicts)
    answer, findings = stability
    stab = f"<p>{esc(answer)}</p><ul>" + "".join(f"<li>{esc(f.replace('**', ''))}</li>" for f in findings) + "</ul>"
    warn = "".join(f"<li>{esc(n)}</li>" for n in notes)
    imgs = "".join(f'<figure><img src="{esc(p.name)}" alt="{esc(p.stem)}"><figcaption>{esc(p.stem)}</figcaption>'
                   "</figure>" for p in plots)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mhc-lm residual-mode comparison</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>Residual-mode comparison</h1><p>Baseline {esc(baseline)}; val loss ± 95% t-interval over seeds, "
            f"Welch t-tests.</p>{_html_table(*headline_rows(summary, baseline))}<h2>Stability</h2>{stab}"
            f"<h2>Verdict</h2><ul>{items}</ul>"
            + (f"<h2>Warnings</h2><ul>{warn}</ul>" if notes else "")
            + f"<h2>All metrics (mean ± sample std)</h2>{_html_table(*table_rows(summary))}{imgs}</body></html>\n")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_reports(summary: dict, groups: dict[str, list[Run]], baseline: str, baseline_note: str | None,
                  plots: list[Path], out: Path, effect: float | None = None) -> tuple[list[str], list[str]]:
    """Write report.md, report.html and summary.json; returns (verdicts, warnings)."""
    base_row = summary[baseline]
    by_group = {name: (f"**{baseline}**: the baseline ({len(base_row['seeds'])} seeds)." if name == baseline
                       else verdict(name, row, base_row, baseline, groups, effect)) for name, row in summary.items()}
    verdicts = [by_group[baseline]] + [v for name, v in by_group.items() if name != baseline]
    for name, row in summary.items():
        row["verdict"] = by_group[name].replace("**", "")
    notes = warnings_for(summary, groups, baseline, baseline_note)
    write_text(out / "report.md", build_markdown(summary, groups, baseline, notes, verdicts, plots))
    write_text(out / "report.html", build_html(summary, baseline, notes, verdicts, plots,
                                               stability_section(summary, groups, baseline)))
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return verdicts, notes
