"""The tiny CPU runs train exactly as recorded in tests/assets/losses/tiny_cpu_20.json (20 steps of
configs/tiny_cpu.yaml on one thread, every residual mode; the variants in the slow test) and keep
their state-dict keys, so checkpoints written before a model restructure still load."""

from __future__ import annotations

import json

import pytest

from tests.model.tiny_run_golden import GOLDEN, MODES, VARIANTS, tiny_run

RECORDED = json.loads(GOLDEN.read_text())["runs"]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_golden")


def check(name: str, work_dir) -> None:
    run = tiny_run(name, work_dir, work_dir / "data")
    assert run["state_dict_keys"] == RECORDED[name]["state_dict_keys"]
    # one thread, same code path: the float ops are the same, so the losses are equal to the bit
    assert run["losses"] == RECORDED[name]["losses"], name


@pytest.mark.parametrize("mode", MODES)
def test_tiny_run_losses_match_the_golden_file(mode, work_dir):
    check(mode, work_dir)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_run_variant_losses_match_the_golden_file(variant, work_dir):
    check(variant, work_dir)
