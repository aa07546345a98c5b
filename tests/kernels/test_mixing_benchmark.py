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


def test_maps_flag_prints_the_h_res_map_table(capsys):
    """`--maps`: one timing row per map and supported n, and the 1B parameter table."""
    spec = importlib.util.spec_from_file_location("mixing_benchmark", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--maps", "--hidden", "8", "--tokens", "4", "--reps", "1", "--streams", "4,8"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    timed = {(r[0], int(r[1])) for r in rows if len(r) == 8 and r[1].isdigit() and float(r[-1]) > 0}
    maps = ("sinkhorn", "permutation", "kronecker", "orthostochastic", "orthogonal")
    assert timed == {(m, n) for m in maps for n in (4, 8)} - {("permutation", 8)}  # n! logits: n <= 6
    params = {(r[0], int(r[1])): int(r[4].replace(",", "")) for r in rows if len(r) == 5 and r[1].isdigit()}
    assert params[("kronecker", 4)] == 2 * 20 * (4 * 2048 * (8 + 2) + (8 + 2) + 3)  # mhc_1b: 20 layers, C = 2048
    assert params[("permutation", 6)] == 2 * 20 * (6 * 2048 * (12 + 720) + (12 + 720) + 3)
