"""benchmarks/train_throughput.py: one interleaved run prints a row per variant, model-field overrides
(`mode@field=value`) reach the model, and a wrong field is named."""

import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


def run(capsys, *args):
    argv = sys.argv
    sys.argv = [str(SCRIPT), "--steps", "1", "--warmup", "0", "--batch", "1", "--seq", "16", "--layers", "1", *args]
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = argv
    return stop.value.code, capsys.readouterr().out


def test_a_row_per_variant_with_overrides_applied(capsys):
    code, out = run(capsys, "--saved", "--variants", "standard,mhc,mhc@sinkhorn_iters=0,mhc:block@n_streams=2")
    assert code == 0
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"standard", "mhc", "mhc@sinkhorn_iters=0", "mhc:block@n_streams=2"} <= set(rows)
    params = {name: int(row.split("|")[2].replace(",", "")) for name, row in rows.items() if name != "mode"}
    assert params["mhc@sinkhorn_iters=0"] == params["mhc"]  # iterations change no parameter
    assert params["mhc:block@n_streams=2"] < params["mhc"]  # n = 2 streams: a smaller phi
    saved = {name: float(row.split("|")[7]) for name, row in rows.items() if name != "mode"}
    assert saved["mhc"] > saved["standard"] > 0  # n fp32 streams kept per sub-layer
    assert saved["mhc:block@n_streams=2"] < saved["mhc"]


def test_a_bool_field_override_is_parsed(capsys):
    code, out = run(capsys, "--variants", "standard,mhc@cpu_kernels=false,mhc@cpu_kernels=true")
    assert code == 0 and "| mhc@cpu_kernels=false |" in out
    code, _ = run(capsys, "--variants", "standard,mhc@cpu_kernels=no")
    assert "takes true or false" in str(code)


def test_an_unknown_model_field_is_named(capsys):
    code, _ = run(capsys, "--variants", "standard,mhc@sinkhorn_iter=0")
    assert "no field 'sinkhorn_iter'" in str(code)
