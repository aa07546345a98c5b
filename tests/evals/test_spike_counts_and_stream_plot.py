"""The comparison counts train.on_spike actions per run (n_skips, n_rewinds, with seed statistics)
and plots the hc/mhc stream telemetry next to Amax."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from evals.compare import compare

STEPS = 60


def write_run(root: Path, name: str, mode: str, seed: int, skips=(), rewinds=(), streams=False) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"model": {"residual_mode": mode}, "train": {"seed": seed}, "metrics": {"spike_window": 16}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for step in range(1, STEPS + 1):
        for kind, steps in (("skip", skips), ("rewind", rewinds)):
            for _ in range(list(steps).count(step)):  # two rewinds of one step: two rows
                rows.append({"step": step, "event": kind, "value": 9.0, "threshold": 5.0,
                             "batches_skipped": 1})
        rec = {"step": step, "loss": 6.0 - step / 100 + 0.01 * seed, "lr": 1e-3, "grad_norm": 1.0,
               "tokens_per_s": 1000.0}
        if streams and step % 20 == 0:
            rec.update({"streams/cos_dist/mean": 0.1 * step / STEPS, "streams/eff_rank/mean": 1 + step / STEPS,
                        "h_res/dist_identity/mean": 0.5, "h_res/dist_uniform/mean": 0.2,
                        "h_res/composite_dist_uniform": 0.05, "amax/fwd/composite": 1.0,
                        "amax/bwd/composite": 1.0})
        rows.append(rec)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_skips_and_rewinds_are_counted_per_run_with_intervals(tmp_path):
    runs = [write_run(tmp_path, "hc_s0", "hc", 0, rewinds=(30, 30, 45)), write_run(tmp_path, "hc_s1", "hc", 1),
            write_run(tmp_path, "hc_s2", "hc", 2, rewinds=(50,), skips=(20,)),
            write_run(tmp_path, "mhc_s0", "mhc", 0, skips=(10, 11), streams=True),
            write_run(tmp_path, "mhc_s1", "mhc", 1, streams=True)]
    out = tmp_path / "report"
    summary = compare(runs, out)
    hc, mhc = summary["hc"], summary["mhc"]
    assert hc["n_rewinds"]["values"] == [3.0, 0.0, 1.0] and hc["n_skips"]["values"] == [0.0, 0.0, 1.0]
    assert hc["n_rewinds"]["mean"] == pytest.approx(4 / 3)
    assert hc["n_rewinds"]["std"] == pytest.approx(np.std([3, 0, 1], ddof=1))
    assert hc["n_rewinds"]["ci_low"] < hc["n_rewinds"]["mean"] < hc["n_rewinds"]["ci_high"]
    assert mhc["n_skips"]["values"] == [2.0, 0.0] and mhc["n_rewinds"]["values"] == [0.0, 0.0]
    assert (out / "streams.png").stat().st_size > 5000
    assert json.loads((out / "summary.json").read_text())["hc"]["n_rewinds"]["values"] == [3.0, 0.0, 1.0]


def test_no_stream_plot_without_stream_telemetry(tmp_path):
    runs = [write_run(tmp_path, "std_s0", "standard", 0), write_run(tmp_path, "std_s1", "standard", 1)]
    compare(runs, tmp_path / "report")
    assert not (tmp_path / "report" / "streams.png").exists()


def test_spike_study_table(tmp_path, capsys):
    from evals.spike_study import main

    runs = [write_run(tmp_path, "hc_s0", "hc", 0, rewinds=(30, 45), streams=True),
            write_run(tmp_path, "hc_s1", "hc", 1, streams=True)]
    (runs[0] / "DIVERGED").write_text("on_spike=rewind: ... the train.max_rewinds=2 allowed\n")
    assert main([str(p) for p in runs]) == 0
    lines = capsys.readouterr().out.splitlines()
    row0 = next(ln for ln in lines if ln.startswith("| hc | none | 0 |")).split("|")
    assert row0[5].strip() == "max_rewinds" and row0[10].strip() == "2" and row0[-2].strip() == "30, 45"
    assert row0[12].strip() == "0.1"  # streams/cos_dist/mean at the last probe (step 60)
    group = next(ln for ln in lines if ln.startswith("| hc | none | 2 |")).split("|")
    assert group[4].strip() == "1" and group[9].strip() == "1 ± 1.41"  # rewinds: mean ± sample std of 2, 0
