"""numba's on-disk cache is touched by one process at a time (`mhc_lm/cpu_kernels/cache_lock.py`):
two ranks compiling on a fresh machine could otherwise leave an index entry that points at the
other's object code, and loading it aborts the process."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from mhc_lm.cpu_kernels import cache_lock  # noqa: E402
from mhc_lm.cpu_kernels import sinkhorn as sk  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, torch
from mhc_lm.cpu_kernels import cpu_sinkhorn
print("imported", flush=True)
x = torch.randn(64, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
p = cpu_sinkhorn(x, 20, 1e-6)
(p * torch.arange(16.0).view(4, 4)).sum().backward()
torch.save({"p": p.detach(), "g": x.grad}, sys.argv[1])
print("done", flush=True)
"""


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def test_first_call_per_signature_takes_the_lock(monkeypatch):
    locked = []

    class Counting:
        def __init__(self, kernel):
            locked.append(kernel)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cache_lock, "cache_lock", Counting)
    monkeypatch.setattr(cache_lock, "_seen", set())

    def kernel(a, k, out):
        out[:] = a * k

    out32, out64 = np.zeros(3, np.float32), np.zeros(3, np.float64)
    for _ in range(3):
        cache_lock.run(kernel, np.ones(3, np.float32), 2, out32)
    assert locked == [kernel] and out32.tolist() == [2.0, 2.0, 2.0]
    cache_lock.run(kernel, np.ones(3, np.float64), 2, out64)  # a new signature: numba compiles again
    cache_lock.run(kernel, np.ones((1, 3), np.float32), 2, out32)  # a new rank likewise
    assert locked == [kernel] * 3


def test_a_process_waits_for_the_lock_holder(tmp_path):
    """While this process holds the lock, another process's first kernel call waits; it finishes once
    the lock is released."""
    with cache_lock.cache_lock(sk.sinkhorn_forward):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "out.pt")], env=_env(),
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "imported"
            time.sleep(1.5)  # a warm cache's call takes milliseconds: without the lock it would be done
            assert child.poll() is None, "the child ran its kernel while the lock was held"
        except BaseException:
            child.kill()
            raise
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 0 and out.strip() == "done"


def test_two_processes_on_a_fresh_cache_then_a_third_loads_it(tmp_path):
    """Two processes compile at once into an empty cache folder; a third loads what they saved. All
    three give the same Sinkhorn output and gradient."""
    import torch

    env = _env(NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    outs = [tmp_path / f"out{i}.pt" for i in range(3)]
    first = [subprocess.Popen([sys.executable, "-c", CHILD, str(o)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for o in outs[:2]]
    for proc in first:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    assert list((tmp_path / "numba_cache").rglob("*.nbi")), "nothing was cached"
    third = subprocess.run([sys.executable, "-c", CHILD, str(outs[2])], env=dict(env, NUMBA_DEBUG_CACHE="1"),
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "data loaded" in third.stdout and "data saved" not in third.stdout, third.stdout[-2000:]
    results = [torch.load(o) for o in outs]
    for r in results[1:]:
        assert torch.equal(r["p"], results[0]["p"]) and torch.equal(r["g"], results[0]["g"])


MODEL_RUN = """
import torch
from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
for mode in ("hc", "mhc"):
    cfg = MhcLmConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, residual_mode=mode)
    ids = torch.randint(0, 64, (2, 16))
    MhcLmForCausalLM(cfg)(ids, labels=ids).loss.backward()
print("ok", flush=True)
"""


def test_warm_compiles_every_signature_a_training_step_uses(tmp_path):
    """`python -m mhc_lm.cpu_kernels.warm` on an empty cache, then hc and mhc train a step: they
    only load (nothing left to compile and save)."""
    env = _env(NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    warm = subprocess.run([sys.executable, "-m", "mhc_lm.cpu_kernels.warm"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert warm.returncode == 0 and "CPU kernels compiled or loaded" in warm.stdout, warm.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", MODEL_RUN], env=dict(env, NUMBA_DEBUG_CACHE="1"), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = {line.split("/")[-1] for line in run.stdout.splitlines() if "data loaded" in line}
    # post + residual (forward, backward), HC's mix-in (two forward passes, backward), mHC's mix-in (three
    # passes) and Sinkhorn (forward, backward); the pre-mix kernels serve other H_res maps and float64
    assert len(loaded) == 10, loaded
    assert "data saved" not in run.stdout, run.stdout[-2000:]
