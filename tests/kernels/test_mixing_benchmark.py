"""benchmarks/mixing.py runs on CPU and prints every table (tiny shapes, no compile)."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("yaml")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "mixing.py"


def test_cpu_run_prints_all_tables(capsys):
    spec = importlib.util.spec_from_file_location("mixing_benchmark", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--device", "cpu", "--no-compile", "--tokens", "64", "--hidden", "16", "--reps", "1", "--e2e-steps", "1",
            "--e2e-layers", "1", "--sinkhorn-iters", "3", "--threads", "1"]
    assert mod.main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    for op in ("coefficients", "sinkhorn", "pre_mix", "post_res"):
        assert any(r[:2] == [op, "eager"] and float(r[-3]) > 0 for r in rows), f"no timing row for {op}"
    e2e = {r[0]: float(r[3]) for r in rows if len(r) == 5 and r[0] in ("standard", "hc", "mhc") and r[1] == "reference"}
    assert set(e2e) == {"standard", "hc", "mhc"} and e2e["standard"] == 0.0  # overhead is relative to standard
    if importlib.util.find_spec("hyper_connections"):
        assert any(r[:2] == ["mhc", "hyper-connections"] for r in rows)  # peer rows


def test_peak_bandwidth_lookup_prefers_the_most_specific_name():
    spec = importlib.util.spec_from_file_location("mixing_benchmark", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.peak_for_name("NVIDIA GH200 480GB") == 4000  # not the H200's 4800
    assert mod.peak_for_name("NVIDIA H200") == 4800
    assert mod.peak_for_name("NVIDIA H100 80GB HBM3") == 3350
    assert mod.peak_for_name("NVIDIA H100 PCIe") == 2000
    assert mod.peak_for_name("NVIDIA A100-SXM4-80GB") == 2039
    assert mod.peak_for_name("Some Future GPU") is None
