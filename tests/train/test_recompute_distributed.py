"""Mixing recompute with DDP and DeepSpeed ZeRO-3 (2 CPU processes): the losses of the
single-process run without recompute (recompute changes no bit of the gradients)."""

import pytest

from tests.train.test_distributed import assert_same_losses, launch, reference  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("config,recompute", [("cpu_ddp_2proc", "block"), ("cpu_deepspeed_zero3_2proc", "block"),
                                              ("cpu_deepspeed_zero2_2proc", "sublayer")])
def test_recompute_matches_single_process(tmp_path, reference, config, recompute):  # noqa: F811
    overrides = [f"model.mixing_recompute={recompute}"]
    stdout = launch(f"configs/accelerate/{config}.yaml", tmp_path / "run", tmp_path, overrides=overrides)
    assert "world_size=2" in stdout
    assert_same_losses(tmp_path / "run", reference)
