"""The report's stability answer (evals/comparison/findings.py, report.py) on fixture sweeps written
here: 1 seed per mode (values, no tests, "1 seed: no test") and 3 seeds per mode (Welch tests, the
significant ones named); skip/rewind events counted per run; the largest grad norm before the spike
detector is armed; tables without rows or columns that are n/a only."""

import json
from pathlib import Path

import numpy as np
import yaml

from evals.compare import compare
from evals.comparison.findings import welch_text
from evals.comparison.plots import band_note_for, make_plots
from evals.comparison.load import group, load_run
from evals.stability import format_metric

STEPS, WINDOW = 100, 64
AMAX = {"standard": [1.0, 1.0, 1.0], "hc": [5.07, 5.3, 4.9], "mhc": [1.0, 1.0, 1.0]}
EARLY_SPIKE = 150.0  # hc's grad norm at step 24, inside the detector's first WINDOW steps


def write(root: Path, mode: str, seed: int) -> Path:
    run = root / f"{mode}_s{seed}"
    run.mkdir(parents=True)
    cfg = {"model": {"residual_mode": mode}, "train": {"seed": seed, "max_steps": STEPS},
           "metrics": {"spike_window": WINDOW}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rng = np.random.default_rng(seed)
    lines = []
    for s in range(1, STEPS + 1):
        gn = 1.0 + rng.normal(0, 0.01) + (EARLY_SPIKE if mode == "hc" and s == 24 else 0.0)
        lines.append({"step": s, "loss": 6.0 - s / STEPS + rng.normal(0, 0.01), "grad_norm": gn,
                      "tokens_per_s": 1000.0})
        if s % 50 == 0:
            lines.append({"step": s, "amax/fwd/composite": AMAX[mode][seed]})
    if mode == "hc":  # the spike policy's events: two skips and a rewind
        lines += [{"step": 30, "event": "skip", "value": 9.0, "threshold": 6.5, "batches_skipped": 1},
                  {"step": 31, "event": "skip", "value": 8.0, "threshold": 6.5, "batches_skipped": 1},
                  {"step": 60, "event": "rewind", "value": 12.0, "threshold": 6.4, "batches_skipped": 4}]
    lines.append({"step": STEPS, "val_loss": 5.0 + 0.01 * seed})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def sweep(root: Path, seeds: int) -> list[Path]:
    return [write(root, mode, s) for mode in AMAX for s in range(seeds)]


def section(md: str, title: str) -> str:
    return md.split(f"## {title}")[1].split("\n## ")[0]


def findings(md: str) -> dict[str, str]:
    return {ln.split("**")[1]: ln for ln in section(md, "Stability").splitlines() if ln.startswith("- **")}


def headline(md: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [ln for ln in md.split("## Stability")[0].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    return header, {c[0]: c for c in ([x.strip() for x in ln.split("|")[1:-1]] for ln in lines[2:])}


def test_one_seed_sweep_states_the_findings_without_tests(tmp_path):
    summary = compare(sweep(tmp_path / "runs", 1), tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## Stability") < md.index("## Verdict")  # right under the headline table
    assert "No stability difference can be tested: some group has a single seed" in section(md, "Stability")
    f = findings(md)
    assert list(f) == ["Amax", "loss spikes", "grad-norm spikes", "skipped steps", "rewinds", "max grad norm",
                       "max grad norm before the spike detector is armed"]
    assert "hc 5.07 (Δ +4.07, 1 seed: no test)" in f["Amax"] and "standard 1;" in f["Amax"]
    assert "hc 2 (Δ +2, 1 seed: no test)" in f["skipped steps"] and "hc 1 (Δ +1" in f["rewinds"]
    assert f"first {WINDOW} steps" in f["max grad norm before the spike detector is armed"]
    assert "hc 151" in f["max grad norm before the spike detector is armed"]  # the warm-up spike is reported
    assert summary["hc"]["grad_norm_spikes"]["mean"] == 0  # ... which the detector could not count
    header, rows = headline(md)
    assert header[6:8] == ["max grad norm", "skips / rewinds"]
    assert rows["hc"][7] == "2 / 1" and rows["standard"][7] == "0 / 0" and rows["hc"][6].startswith("151")
    assert summary["hc"]["n_skips"]["values"] == [2.0] and summary["mhc"]["n_rewinds"]["values"] == [0.0]
    # every test is impossible with 1 seed: one sentence instead of a table of n/a rows
    welch = section(md, "Welch t-tests against standard")
    assert "No Welch test could be made" in welch and "|" not in welch
    details = section(md, "All metrics")
    table_header = next(ln for ln in details.splitlines() if ln.startswith("| group"))
    assert "vanished" not in table_header and "max Amax bwd" not in table_header  # n/a-only columns left out
    assert "Not logged by any run (columns left out): max Amax bwd, vanished 1e-04 %" in details
    assert all(any(c != "n/a" for c in ln.split("|")[3:-1]) for ln in details.splitlines() if ln.startswith("| "))


def test_three_seed_sweep_tests_each_finding(tmp_path):
    summary = compare(sweep(tmp_path / "runs", 3), tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "report.md").read_text()
    f = findings(md)
    amax = summary["hc"]["vs_baseline"]["max_amax_fwd"]
    assert amax["p"] < 0.05
    assert f"hc 5.09 ± 0.2007 (Δ +4.09, {welch_text(amax)})" in f["Amax"] and "significant: p < 0.001" in f["Amax"]
    assert "no spread: no test" in f["rewinds"]  # 1, 1, 1 vs 0, 0, 0
    assert "mhc 0 ± 0 (Δ +0, no spread: no test)" in f["skipped steps"]
    answer = section(md, "Stability").strip().splitlines()[0]
    assert answer.startswith("Stability differences with a significant Welch test:")
    assert "hc higher Amax than standard" in answer
    assert "mhc higher Amax" not in answer
    welch = section(md, "Welch t-tests against standard")
    assert "| hc | max Amax fwd |" in welch and "No test (a group with 1 seed, or no spread in either group) for:" \
        in welch
    assert all("n/a" not in ln for ln in welch.splitlines() if ln.startswith("| hc") or ln.startswith("| mhc"))


def test_plot_titles_say_when_there_is_no_band(tmp_path):
    one = group([load_run(d) for d in sweep(tmp_path / "one", 1)])
    three = group([load_run(d) for d in sweep(tmp_path / "three", 3)])
    assert band_note_for(one) == "1 seed per group: the run's curve, no band"
    assert band_note_for(three) == "mean over seeds, band = ± 1 sample std"
    assert "± 1 sample std where a group has >= 2 seeds" in band_note_for({**three, "x": one["hc"]})
    names = {p.name for p in make_plots(one, tmp_path)}
    assert {"loss.png", "grad_norm.png", "spikes.png", "amax.png"} <= names


def test_stability_cli_prints_vanished_ratios_in_percent():
    assert format_metric("vanished/1e-04", 0.7449) == "vanished/1e-04=74.49%"
    assert format_metric("amax/fwd/composite", 5.0731) == "amax/fwd/composite=5.073"


def test_the_cli_prints_the_stability_answer(tmp_path, capsys):
    from evals.compare import main

    assert main([str(d) for d in sweep(tmp_path / "runs", 1)] + ["--out", str(tmp_path / "out"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "No stability difference can be tested" in out
    assert "  Amax (max composite forward gain" in out and "hc 5.07 (Δ +4.07, 1 seed: no test)" in out
