"""The tiny CPU runs train exactly as recorded in tests/assets/losses/tiny_cpu_20.json (20 steps of
configs/tiny_cpu.yaml on one thread, every residual mode; the variants in the slow test) and keep
their state-dict keys, so checkpoints written before a model restructure still load."""

from __future__ import annotations

import json

import pytest

from tests.model.tiny_run_golden import (
    GOLDEN,
    MODES,
    REFERENCE_PATH,
    VARIANTS,
    tiny_run,
)

RECORDED = json.loads(GOLDEN.read_text())["runs"]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_golden")


def check(name: str, work_dir) -> None:
    run = tiny_run(name, work_dir, work_dir / "data")
    name = REFERENCE_PATH.get(name, name)
    assert run["state_dict_keys"] == RECORDED[name]["state_dict_keys"]
    # one thread, same code path: the same float ops. Equal to the bit on the machine that recorded them;
    # another CPU's BLAS and numba vector width round differently (measured: <= 2 ulp of the loss, 2e-6),
    # so 1e-5 per step: a change of the maths moves a 20-step loss by far more
    diffs = [abs(a - b) for a, b in zip(run["losses"], RECORDED[name]["losses"], strict=True)]
    assert max(diffs) <= 1e-5, (name, max(diffs))


@pytest.mark.parametrize("mode", MODES + tuple(REFERENCE_PATH))
def test_tiny_run_losses_match_the_golden_file(mode, work_dir):
    check(mode, work_dir)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_run_variant_losses_match_the_golden_file(variant, work_dir):
    check(variant, work_dir)
