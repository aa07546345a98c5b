"""The memory estimate (mhc_lm/train/memory_estimate.py) against the activation bytes that
benchmarks/memory.py measures (method 1, saved tensors), at two sizes, for every mode and recompute
setting, fp32 and bf16 autocast; and the weights / grads / optimizer arithmetic per strategy."""

import sys
from pathlib import Path

import pytest

from mhc_lm.model import MhcLmConfig
from mhc_lm.train import memory_estimate as mem

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory as bench  # noqa: E402

# two sizes: the widths and head layouts differ, so every coefficient of the formula is exercised
SHAPES = {
    "C64": dict(model=dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_attention_heads=4,
                           num_key_value_heads=2), full_layers=8, batch=2, seq=64),
    "C128": dict(model=dict(vocab_size=256, hidden_size=128, intermediate_size=352, num_attention_heads=8,
                            num_key_value_heads=4), full_layers=12, batch=2, seq=64),
}
TOLERANCE = 0.01
"""Relative: the measurement also holds weight-sized tensors (hc's C x (n + 2) projection), which per
token shrink as 1 / tokens; the formula counts the token-linear part only."""


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("mode, recompute", bench.VARIANTS)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_layer_activations_match_the_benchmark(shape_name, mode, recompute, bf16):
    shape = SHAPES[shape_name]
    measured = bench.per_layer(shape, mode, recompute, bf16, "cpu", bench.saved_bytes) * 1024  # bytes/token/layer
    L_r = bench.base_layers(shape, "mhc", "block") if recompute == "block" else None
    c = MhcLmConfig(**shape["model"], num_hidden_layers=shape["full_layers"], residual_mode=mode, n_streams=4,
                    grid_size=2, mixing_recompute=recompute, mixing_recompute_layers=L_r)
    assert mem.layer_bytes(c, bf16) == pytest.approx(measured, rel=TOLERANCE)


def _config(**kw):
    return MhcLmConfig(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, **kw)


def test_sharding_divides_what_each_stage_shards():
    c, P, N = _config(), 1_000_000, 8
    e = {k: mem.estimate(mem.Strategy(k, k, N), P, c, 1024, "bf16", False)
         for k in ("single", "ddp", "fsdp", "zero1", "zero2", "zero3")}
    assert (e["single"].weights, e["single"].grads, e["single"].optimizer) == (4 * P, 4 * P, 8 * P)
    assert e["ddp"].grads == 8 * P  # + DDP's gradient buckets
    assert (e["fsdp"].weights, e["fsdp"].grads, e["fsdp"].optimizer) == (4 * P / N, 4 * P / N, 8 * P / N)
    assert (e["zero1"].weights, e["zero1"].grads, e["zero1"].optimizer) == (2 * P, 2 * P, 12 * P / N)
    assert (e["zero2"].weights, e["zero2"].grads) == (2 * P, 2 * P / N)
    assert (e["zero3"].weights, e["zero3"].grads) == (2 * P / N, 2 * P / N)
    assert len({x.activations for x in e.values()}) == 1  # activations are per device, never sharded here
    fp32 = mem.estimate(mem.Strategy("z", "zero1", N), P, c, 1024, "no", False)
    assert (fp32.weights, fp32.grads, fp32.optimizer) == (4 * P, 4 * P, 8 * P / N)


def test_activations_scale_with_tokens_and_checkpointing_keeps_layer_inputs():
    c = _config(residual_mode="mhc", n_streams=4)
    one = mem.activation_bytes(c, 1000, False, False)
    assert mem.activation_bytes(c, 2000, False, False) == pytest.approx(2 * one)
    ckpt = mem.activation_bytes(c, 1000, False, True)
    per_layer = mem.layer_bytes(c, False)
    assert ckpt == pytest.approx(1000 * (4 * 4 * 4 * 64 + per_layer + 8 * 1000 + 16 * 64))
    assert ckpt < one
    assert mem.activation_bytes(_config(residual_mode="mhc", n_streams=4, mixing_recompute="block"), 1000, False,
                                False) < one


def test_strategies_are_read_from_the_accelerate_files():
    got = {p.stem: mem.strategy_from_accelerate_yaml(p, ROOT) for p in (ROOT / "configs" / "accelerate").glob("*.yaml")}
    assert (got["deepspeed_zero2_8gpu"].kind, got["deepspeed_zero2_8gpu"].world_size) == ("zero2", 8)
    assert (got["deepspeed_zero2_2x8gpu"].kind, got["deepspeed_zero2_2x8gpu"].world_size) == ("zero2", 16)
    assert (got["fsdp_8gpu"].kind, got["ddp_8gpu"].kind, got["single_gpu"].kind) == ("fsdp", "ddp", "single")
    assert got["cpu_deepspeed_zero3_2proc"].kind == "zero3" and got["cpu_deepspeed_zero3_2proc"].cpu
    env = {"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    s = mem.strategy_from_env(env, cpu=False)
    assert (s.kind, s.world_size) == ("zero3", 4)
    assert mem.strategy_from_env({}, cpu=True).kind == "single"
