"""benchmarks/kernel_resources.py: the kernels compile for sm_90 offline (no GPU) at the shapes the
CUDA launch policy picks, and the memory-bound mixing kernels neither spill nor fall back to
narrow loads (also when C is not a multiple of 16). Runs in a subprocess: the report compiles for the GPU, not the interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def _ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return Path(get_ptxas(90).path).exists()
    except Exception:
        return False


@pytest.mark.skipif(not _ptxas_available(), reason="triton build without the NVIDIA ptxas")
@pytest.mark.parametrize("channels, dtype", [(2048, "bf16"), (1000, "fp32")])  # 1000: not a multiple of 16
def test_mixing_kernels_compile_for_sm90_without_spills(channels, dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = ROOT / "benchmarks" / "kernel_resources.py"
    out = subprocess.run(
        [sys.executable, str(script), "--n", "4", "--channels", str(channels), "--dtypes", dtype, "--only", "pre_mix,post_res"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines() if line.startswith("| ")]
    head, body = rows[0], rows[1:]
    assert head[0] == "kernel"
    col = {name: head.index(name) for name in ("kernel", "regs", "spill B", "loads", "stores")}
    kernels = {r[col["kernel"]]: r for r in body}
    assert set(kernels) == {"pre_mix fwd", "pre_mix bwd", "post_res fwd", "post_res bwd"}
    for name, r in kernels.items():
        assert int(r[col["spill B"]]) == 0, f"{name} spills: {r}"
        assert int(r[col["regs"]]) <= 128, f"{name} needs {r[col['regs']]} registers per thread"
        assert "v4" in r[col["stores"]], f"{name} stores are not 16-byte vectors: {r}"
        assert "v4" in r[col["loads"]], f"{name} stream loads are not 16-byte vectors: {r}"
