"""Cross-run comparison: is one residual mode better or more stable than another, and how sure?

    python -m evals.compare runs/quickstart/{standard,hc,mhc,grid} --out runs/quickstart/report
    python -m evals.compare runs/sweep_tiny_cpu/* --out runs/sweep_tiny_cpu/report   # seeds from launch/sweep.py
    python -m evals.compare runs/sweep/* --baseline mhc --effect 0.02 --probe

Runs are grouped by residual mode (config.yaml `model.residual_mode`, else hf/config.json; mhc with
a non-default `model.h_res_map` as `mhc[MAP]`; `--group-by KEY` adds settings such as optim.lr to
the label); the runs of a group are its replicate seeds. Writes to --out (default: `compare/` in
the folder holding the runs): report.md (headline table, the stability findings with their tests,
one verdict line per group, warnings, Welch tests, all metrics), report.html, summary.json, and
loss.png, grad_norm.png, spikes.png, amax.png, vanished.png (those with data).

Statistics (scipy): mean and sample std (ddof = 1) over seeds, a 95% t-interval, Welch's t-test of
each group against `--baseline` (default standard) for final val loss, the stability metrics (max
composite Amax, loss and grad-norm spike counts, skipped steps and rewinds of the spike policy, max
grad norm and max grad norm before the spike detector is armed) and tokens/s, and for val loss without a detectable difference the seeds
per group that would give 80% power to detect `--effect` (default: the observed difference) at the
observed spread. A single-seed group gets no interval or test. Final losses of diverged runs are
left out of the statistics. Column definitions: docs/stability.md.

Each run directory counts once (the same directory given twice, also via `.`/`..` or a symlink, is
refused). Seeds of one group that end at different steps, differ in other settings, or runs
validated on different data are named in warnings. Unreadable metrics.jsonl lines are skipped with
a warning; a run without any readable record is an error. Errors exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mhc_lm.config_utils import ConfigError, positive_int  # noqa: E402
from mhc_lm.run_dir import RunDir  # noqa: E402

from evals.comparison.load import (MODE_ORDER, Run, check_distinct, group, group_label, load_run,  # noqa: E402,F401
                                   warn_mixed_settings, warn_uneven_lengths)
from evals.comparison.plots import make_plots  # noqa: E402
from evals.comparison.report import headline_rows, stability_section, table_rows, write_reports  # noqa: E402,F401
from evals.comparison.summary import summarize, summarize_run  # noqa: E402,F401

DEFAULT_BASELINE = "standard"


def choose_baseline(groups: dict[str, list[Run]], baseline: str | None) -> tuple[str, str | None]:
    """(baseline group, note): an explicit --baseline must exist; the default 'standard' falls back to the
    first group with a note when no standard runs were given."""
    if baseline is not None:
        if baseline not in groups:
            raise ConfigError(f"--baseline {baseline!r} is not one of the groups {list(groups)}")
        return baseline, None
    if DEFAULT_BASELINE in groups:
        return DEFAULT_BASELINE, None
    first = next(iter(groups))
    return first, f"No {DEFAULT_BASELINE} runs: differences and tests are against {first} (set --baseline)."


def compare(run_dirs: list[Path], out: Path, final_window: int = 10, probe: bool = False,
            baseline: str | None = None, group_by: tuple[str, ...] = (), effect: float | None = None,
            report: dict | None = None, plots: bool = True) -> dict:
    """Load, (optionally probe,) test, plot and report; returns the per-group summary. `report`, when
    given, receives the headline, verdict lines and warnings written to report.md."""
    if not run_dirs:
        raise ConfigError("no run directories given")
    if final_window < 1:
        raise ConfigError(f"final window must be >= 1 training losses (got {final_window})")
    if effect is not None and not (math.isfinite(effect) and effect > 0):
        raise ConfigError(f"--effect must be a val-loss difference > 0 (got {effect})")
    check_distinct(run_dirs)
    if probe:
        from evals.stability import run_stability

        for run in map(RunDir, run_dirs):
            if not run.stability_path.is_file() and run.has_export():
                run_stability(run.path)
    label = functools.partial(group_label, extra_keys=tuple(group_by))
    runs = [load_run(Path(d), label) for d in run_dirs]
    groups = group(runs)
    base, note = choose_baseline(groups, baseline)
    out.mkdir(parents=True, exist_ok=True)
    warn_uneven_lengths(groups)
    warn_mixed_settings(groups, group_by)
    summary = summarize(groups, final_window, base)
    pngs = make_plots(groups, out) if plots else []
    verdicts, notes = write_reports(summary, groups, base, note, pngs, out, effect)
    if report is not None:
        report.update(baseline=base, headline=headline_rows(summary, base), verdicts=verdicts, warnings=notes,
                      stability=stability_section(summary, groups, base))
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
    parser.add_argument("--baseline", default=None,
                        help=f"group the others are tested against (default {DEFAULT_BASELINE}, else the first group)")
    parser.add_argument("--group-by", default="", metavar="KEY[,KEY]",
                        help="dotted config keys added to the group label, e.g. optim.lr (default: mode only)")
    parser.add_argument("--effect", type=float, default=None,
                        help="val-loss difference the power estimate targets (default: the observed difference)")
    parser.add_argument("--final-window", type=positive_int, default=10,
                        help="training losses averaged for 'final' (>= 1; default %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="write the reports only (no PNGs)")
    parser.add_argument("--probe", action="store_true",
                        help="run evals.stability on runs without stability.json (needs hf/ and the prepared data)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = default_out(args.run_dirs)
    group_by = tuple(k.strip() for k in args.group_by.split(",") if k.strip())
    written: dict = {}
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning  # one line per warning on stderr (restored on exit)
        try:
            compare(args.run_dirs, args.out, args.final_window, args.probe, args.baseline, group_by, args.effect,
                    report=written, plots=not args.no_plots)
        except ConfigError as err:  # a bad run directory (RunDirError) or argument: one line, status 2
            print(f"error: {err}", file=sys.stderr)
            return 2
    header, rows = written["headline"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    answer, findings = written["stability"]
    print(answer)
    for line in findings:
        print("  " + line.replace("**", ""))
    for v in written["verdicts"]:
        print(v.replace("**", ""))
    for n in written["warnings"]:
        print(f"note: {n}", file=sys.stderr)
    print(f"[mhc-lm] report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
