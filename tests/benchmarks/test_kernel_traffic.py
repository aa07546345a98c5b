"""benchmarks/kernel_traffic.py: the interpreter byte counter is exact on a copy kernel, the counts
extrapolate exactly along tokens, and the benchmark prints its tables. Each check runs in a
subprocess: the counter turns the Triton interpreter on before triton is imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _python(code: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_counter_is_exact_on_a_copy_kernel():
    out = _python(
        "import json, torch, traffic_counter as tc\n"
        "rows = []\n"
        "for dt, reads in ((torch.float32, 1), (torch.bfloat16, 3)):\n"
        "    l = tc.copy_traffic(1000, dt, reads, block=256)\n"
        "    rows.append({k: [a.loaded, a.stored, a.unique_loaded, a.unique_stored] for k, a in l.args.items()})\n"
        "print(json.dumps(rows))\n"
    )
    fp32, bf16 = json.loads(out.splitlines()[-1])
    # 1000 elements in 4 programs of 256, the last one 3/4 masked: only masked-in lanes count
    assert fp32 == {"X": [4000, 0, 4000, 0], "Y": [0, 4000, 0, 4000]}
    # read three times: moved 3x, unique once; bf16 is 2 bytes per element
    assert bf16 == {"X": [6000, 0, 2000, 0], "Y": [0, 2000, 0, 2000]}


def test_counts_are_affine_in_tokens():
    """What the benchmark extrapolates from 64 and 128 tokens equals a direct count at 192, for
    the kernels whose traffic has a token-independent part (phi re-reads, split partials)."""
    out = _python(
        "import json, torch, kernel_traffic as kt\n"
        "p = kt.cuda_policy(192, 64, 2, torch.float32)\n"
        "ops = ('coefficients', 'sinkhorn')\n"
        "a, b, c = (kt.count(T, 64, 2, torch.float32, torch.float32, 2, p, ops) for T in (64, 128, 192))\n"
        "e = kt.extrapolate(a, b, 64, 128, 192)\n"
        "print(json.dumps([[r[k] for k in ('kernel', 'moved', 'unique', 'minimum')] for r in e]))\n"
        "print(json.dumps([[r[k] for k in ('kernel', 'moved', 'unique', 'minimum')] for r in c]))\n"
    )
    extrapolated, direct = (json.loads(line) for line in out.splitlines()[-2:])
    assert extrapolated == direct
    kernels = [r[0] for r in direct]
    assert kernels == ["coef_fwd", "coef_dx", "coef_dphi", "(coef_dx + coef_dphi)", "sinkhorn_fwd", "sinkhorn_bwd"]


def test_benchmark_prints_every_kernel_and_the_projection(tmp_path):
    out = _python(
        "import sys, kernel_traffic as kt\n"
        f"sys.exit(kt.main(['--hidden', '64', '--n', '2', '--iters', '2', '--full-tokens', '1024', '--l2-mib', '0.1', '--json', r'{tmp_path / 't.json'}']))\n",
        timeout=600,
    )
    printed = {r.split("|")[3].strip() for r in out.splitlines() if r.startswith("| ") and r.count("|") == 14}
    rows = {r["kernel"]: r for r in json.loads((tmp_path / "t.json").read_text())["cases"][0]["rows"]}
    kernels = {"pre_mix_fwd", "pre_mix_bwd", "post_res_fwd", "post_res_bwd", "coef_fwd", "coef_dx", "coef_dphi",
               "(coef_dx + coef_dphi)", "sinkhorn_fwd", "sinkhorn_bwd"}
    assert set(rows) == kernels and kernels <= printed
    for name, r in rows.items():
        assert r["moved"] >= r["unique"] > 0 and r["minimum"] > 0, name
    for name in ("pre_mix_fwd", "post_res_fwd", "sinkhorn_fwd", "sinkhorn_bwd"):  # one read, one write: at minimum
        assert rows[name]["moved"] == rows[name]["minimum"], name
    # the whole coefficient backward: x is read by both kernels, so the op moves more than its minimum,
    # which counts x once
    op, dx, dphi = rows["(coef_dx + coef_dphi)"], rows["coef_dx"], rows["coef_dphi"]
    assert op["moved"] == dx["moved"] + dphi["moved"]
    assert op["minimum"] < dx["minimum"] + dphi["minimum"] and op["unique"] < dx["unique"] + dphi["unique"]
    # x (1024 x 2 x 64 fp32 = 0.5 MiB) does not fit the 0.1 MiB "L2": its second read counts for HBM
    assert op["hbm"] == op["unique"] + op["args"]["X"]["loaded"] - op["args"]["X"]["unique"] > op["unique"]
    assert "mHC minus standard" in out and "+6.7%" in out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA message")
def test_measure_without_cuda_is_one_line_and_status_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "kernel_traffic.py"), "--measure", str(tmp_path / "t.json")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == ["kernel_traffic: --measure needs a CUDA device"]
