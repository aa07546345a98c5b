"""The headline, verdicts, warnings and plots of evals.compare on fixture runs whose final val
losses are set: a significant difference, a null difference, a diverged run, a single-seed group."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from evals.compare import compare, main
from evals.comparison.load import group, load_run
from evals.comparison.stats import pooled_sd, seeds_needed

STEPS = 40
VAL = {  # group: (mode, extra model settings, final val loss per seed)
    "standard": ("standard", {}, [5.00, 5.01, 5.02]),
    "mhc": ("mhc", {}, [4.80, 4.81, 4.79]),  # clearly lower
    "hc": ("hc", {}, [5.02, 4.99, 5.005]),  # no real difference
    "grid": ("grid", {}, [5.03, 5.01, float("nan")]),  # seed 2 diverged
    "mhc[kronecker]": ("mhc", {"h_res_map": "kronecker"}, [4.9]),  # one seed
}


def write(root: Path, name: str, mode: str, model: dict, seed: int, val: float, window: int) -> Path:
    run = root / f"{name}_s{seed}"
    run.mkdir(parents=True)
    cfg = {"model": {"residual_mode": mode, **model}, "train": {"seed": seed, "max_steps": STEPS},
           "metrics": {"spike_window": window}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rng = np.random.default_rng(seed)
    lines = [{"step": s, "loss": 6.0 - s / STEPS + rng.normal(0, 0.01), "grad_norm": 1.0 + rng.normal(0, 0.01),
              "tokens_per_s": 1000.0 + 10 * seed, "amax/fwd/composite": 1.0} for s in range(1, STEPS + 1)]
    if np.isfinite(val):
        lines.append({"step": STEPS, "val_loss": val})
    else:  # diverged at step 30: an earlier val loss, then the DIVERGED note
        lines = lines[:30] + [{"step": 20, "val_loss": 5.5}]
        (run / "DIVERGED").write_text("non-finite loss at step 31")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


@pytest.fixture
def fixture_runs(tmp_path):
    dirs = [write(tmp_path, name.replace("[", "_").replace("]", ""), mode, model, seed, val, window=10)
            for name, (mode, model, vals) in VAL.items() for seed, val in enumerate(vals)]
    return tmp_path, dirs


def headline(md: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        if len(cells) != len(header):
            break
        rows[cells[0]] = cells
    return header, rows


def verdicts(md: str) -> dict[str, str]:
    block = md.split("## Verdict")[1].split("##")[0]
    return {ln.split("**")[1]: ln for ln in block.splitlines() if ln.startswith("- **")}


def test_headline_significant_null_diverged_and_single_seed(fixture_runs, tmp_path):
    root, dirs = fixture_runs
    with pytest.warns(UserWarning, match="diverged") as caught:
        summary = compare(dirs, tmp_path / "out", plots=False)
    assert not any("different steps" in str(w.message) for w in caught)  # a diverged run ends early by definition
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("| group | seeds | val loss ± 95% CI") < md.index("## All metrics")  # headline first
    header, rows = headline(md)
    assert header == ["group", "seeds", "val loss ± 95% CI", "Δ val loss vs standard [95% CI], p",
                      "loss / grad-norm spikes", "max Amax fwd", "max grad norm", "skips / rewinds", "diverged",
                      "tokens/s"]
    assert list(rows) == ["standard", "hc", "mhc", "mhc[kronecker]", "grid"]  # mode order, H_res map in the label
    std, mhc, hc = (VAL[g][2] for g in ("standard", "mhc", "hc"))

    # significant: the cell is scipy's Welch test and the verdict says so
    ref = stats.ttest_ind(mhc, std, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert rows["mhc"][3] == f"{np.mean(mhc) - np.mean(std):+.4f} [{ci.low:+.4f}, {ci.high:+.4f}], p < 0.001"
    half = stats.t.ppf(0.975, 2) * stats.sem(mhc)
    assert rows["mhc"][2] == f"{np.mean(mhc):.4f} ± {half:.4f}"
    v = verdicts(md)
    assert "val loss lower than standard by 0.2100" in v["mhc"] and "a detectable difference" in v["mhc"]

    # null: no detectable difference, with the seeds that would be needed at this spread
    p = stats.ttest_ind(hc, std, equal_var=False).pvalue
    assert p > 0.05 and f"p = {p:.2f}" in rows["hc"][3]
    need = seeds_needed(abs(np.mean(hc) - np.mean(std)), pooled_sd(hc, std))
    assert need is not None and need > 3
    assert v["hc"].startswith("- **hc**: no detectable difference in val loss from standard at 3 seeds")
    assert f">= {need} seeds per group needed to detect Δ = {abs(np.mean(hc) - np.mean(std)):.4f}" in v["hc"]

    # diverged: counted, left out of the val-loss statistics, named in the verdict
    assert rows["grid"][8] == "1/3" and rows["standard"][8] == "0/3"
    assert summary["grid"]["final_val_loss"]["n"] == 2
    assert summary["grid"]["final_val_loss"]["mean"] == pytest.approx(5.02)
    assert summary["grid"]["final_val_loss"]["values"][2] == 5.5  # kept in the per-seed values
    assert "at 2 vs 3 seeds" in v["grid"] and "1 of 3 seeds diverged" in v["grid"]

    # single seed: no interval, no test, said so in the row, the verdict and the warnings
    assert rows["mhc[kronecker]"][1] == "1" and rows["mhc[kronecker]"][2] == "4.9000 (1 seed, no CI)"
    assert rows["mhc[kronecker]"][3] == f"{4.9 - np.mean(std):+.4f} (no test: 1 seed)"
    assert "from a single seed" in v["mhc[kronecker]"] and "no confidence interval or test" in v["mhc[kronecker]"]
    warnings_block = md.split("## Warnings")[1].split("##")[0]
    assert "Fewer than 3 seeds in mhc[kronecker] (1)" in warnings_block
    assert "mhc[kronecker]: a single seed, shown without a confidence interval or test" in warnings_block
    assert "spike window" not in warnings_block  # 40 steps >= 3 x 10
    assert summary["hc"]["vs_baseline"]["final_val_loss"]["p"] == pytest.approx(p)


def test_short_runs_and_two_seeds_are_warned_about(tmp_path, capsys):
    dirs = [write(tmp_path, g, g, {}, s, 5.0 + 0.01 * s + (0.05 if g == "mhc" else 0), window=128)
            for g in ("standard", "mhc") for s in range(2)]
    assert main([str(d) for d in dirs] + ["--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert not list((tmp_path / "out").glob("*.png"))
    out, err = capsys.readouterr()
    assert "mhc: val loss higher than standard" in out or "mhc: no detectable difference" in out
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert any("Fewer than 3 seeds in standard (2), mhc (2)" in n for n in notes)
    assert any("4 run(s) of 40 steps, fewer than 3 x the spike window (128)" in n and "(100% of the run)" in n
               for n in notes)


def test_baseline_choice(fixture_runs, tmp_path, capsys):
    root, dirs = fixture_runs
    no_standard = [d for d in dirs if not d.name.startswith("standard")]
    with pytest.warns(UserWarning):
        summary = compare(no_standard, tmp_path / "a", plots=False)
    assert "vs_baseline" not in summary["hc"] and "vs_baseline" in summary["mhc"]  # first group is the baseline
    assert "No standard runs: differences and tests are against hc" in (tmp_path / "a" / "report.md").read_text()
    with pytest.warns(UserWarning):
        compare(dirs, tmp_path / "b", baseline="mhc", plots=False)
    assert "Δ val loss vs mhc" in (tmp_path / "b" / "report.md").read_text()
    assert main([str(d) for d in dirs] + ["--out", str(tmp_path / "c"), "--baseline", "resnet"]) == 2
    assert "--baseline 'resnet' is not one of the groups" in capsys.readouterr().err


def test_group_by_adds_a_setting_to_the_label(tmp_path):
    dirs = []
    for lr in (1e-3, 3e-3):
        for s in range(2):
            d = write(tmp_path, f"lr{lr}", "standard", {}, s, 5.0 + lr * 10 + 0.01 * s, window=10)
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["optim"] = {"lr": lr}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
            dirs.append(d)
    summary = compare(dirs, tmp_path / "out", group_by=("optim.lr",), baseline="standard lr=0.001", plots=False)
    assert list(summary) == ["standard lr=0.001", "standard lr=0.003"]
    assert summary["standard lr=0.003"]["vs_baseline"]["final_val_loss"]["diff"] == pytest.approx(0.02)


def test_plots_floor_amax_shade_the_unarmed_detector_and_count_seeds(fixture_runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evals.comparison.plots import Panel, _draw
    from evals.comparison.summary import grad_norm_spike_curve

    _, dirs = fixture_runs
    groups = group([load_run(d) for d in dirs])
    fig, (amax_ax, spike_ax) = plt.subplots(1, 2)
    assert _draw(amax_ax, groups, Panel("amax/fwd/composite", "fwd", logy=True, amax=True))
    low, high = amax_ax.get_ylim()
    assert low <= 0.5 and high >= 2.0  # 1.0 everywhere: no zoom into 0.99999
    labels = amax_ax.get_legend_handles_labels()[1]
    assert "standard (3 seeds, 1 by definition)" in labels and "mhc (3 seeds)" in labels
    assert "mhc[kronecker] (1 seed)" in labels and not any("n=" in x for x in labels)
    assert _draw(spike_ax, groups, Panel("spike/grad_norm_count", "gn", curve=grad_norm_spike_curve, armed=True))
    labels = spike_ax.get_legend_handles_labels()[1]
    assert "detector not armed (first 10 steps)" in labels
    assert all(min(line.get_xdata()) >= 10 for line in spike_ax.get_lines())  # no count drawn while blind
    plt.close(fig)


def test_verdict_ignores_differences_too_small_to_matter(tmp_path):
    """mHC's Amax sits 2e-5 under standard's 1 (finite Sinkhorn) in every seed: a Welch test calls that
    significant, the verdict must not; a 5% Amax difference is still called out."""
    for amax, expect in [(1.0 - 2e-5, False), (1.05, True)]:
        root = tmp_path / str(amax)
        dirs = []
        for name, mode, vals in [("standard", "standard", [5.0, 5.01, 5.02]), ("mhc", "mhc", [5.0, 5.02, 5.01])]:
            for seed, val in enumerate(vals):
                run = write(root, name, mode, {}, seed, val, window=10)
                records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                for r in records:
                    if mode == "mhc" and "amax/fwd/composite" in r:
                        r["amax/fwd/composite"] = amax + 1e-7 * seed
                (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
                dirs.append(run)
        compare(dirs, out=root / "report", plots=False)
        md = (root / "report" / "report.md").read_text()
        line = next(ln for ln in md.splitlines() if ln.startswith("- **mhc**"))
        assert ("max Amax fwd" in line) is expect, line
