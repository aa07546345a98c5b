"""benchmarks/cpu_mixing_ops.py runs every row (hc and mhc, kernels and references) and prints the table."""

import importlib.util
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "cpu_mixing_ops", Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_mixing_ops.py")
cpu_mixing_ops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cpu_mixing_ops)


def test_prints_a_row_per_mode_setting_and_op(capsys):
    assert cpu_mixing_ops.main(["--hidden", "16", "--tokens", "10", "--threads", "1", "--repeats", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| hc") or line.startswith("| mhc")]
    assert len(rows) == 12
    for row in rows:
        fastest, median = (float(v) for v in row.strip("| ").split("|")[1:3])
        assert 0 < fastest <= median
