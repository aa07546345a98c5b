"""Invariants of the hc/mhc stream telemetry (mhc_lm/metrics/streams.py) and its probe entries."""

import math

import pytest
import torch

from mhc_lm.metrics.streams import (distance_from_identity, distance_from_uniform, effective_rank,
                                    pairwise_cosine_distance, stream_metrics)


def test_identical_streams_have_no_diversity():
    x = torch.randn(3, 5, 1, 16).expand(3, 5, 4, 16)  # (B, T, n, C), every stream the same
    assert pairwise_cosine_distance(x).abs().max() < 1e-12
    assert (effective_rank(x) - 1).abs().max() < 1e-6


def test_orthogonal_streams_of_equal_norm_are_fully_diverse():
    x = 3.0 * torch.eye(4, 16).expand(2, 4, 16)  # 4 orthogonal streams, norm 3
    assert torch.allclose(pairwise_cosine_distance(x), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(effective_rank(x), torch.full((2,), 4.0, dtype=torch.float64))
    opposite = torch.stack([torch.ones(8), -torch.ones(8)])  # cos = -1: distance 2, one direction
    assert pairwise_cosine_distance(opposite).item() == pytest.approx(2.0)
    assert effective_rank(opposite).item() == pytest.approx(1.0)  # but a single direction: rank 1


def test_matrix_distances_to_identity_and_uniform():
    n = 4
    eye, uniform = torch.eye(n), torch.full((n, n), 1.0 / n)
    perm = eye[[1, 2, 3, 0]]
    assert distance_from_identity(eye).item() == 0.0
    assert distance_from_uniform(uniform).item() == pytest.approx(0.0, abs=1e-15)
    assert distance_from_identity(uniform).item() == pytest.approx(1.0)  # normalised: I and J/n are 1 apart
    assert distance_from_uniform(eye).item() == pytest.approx(1.0)
    assert distance_from_uniform(perm).item() == pytest.approx(1.0)  # every permutation is as far as I
    m = torch.rand(n, n)
    assert distance_from_identity(m).item() == pytest.approx(distance_from_identity(m.T).item())
    assert distance_from_uniform(m).item() == pytest.approx(torch.linalg.norm(m - 0.25).item() / math.sqrt(3))


def test_stream_metrics_names_and_composite():
    B, T, n, C = 2, 3, 4, 8
    outs = [torch.randn(B, T, 1, C).expand(B, T, n, C), torch.randn(B, T, n, C)]
    eye = torch.eye(n).expand(B, T, n, n)
    uniform = torch.full((B, T, n, n), 1.0 / n)
    m = stream_metrics(outs, [eye, eye, uniform, eye])
    assert m["streams/cos_dist/layer_00"].item() == pytest.approx(0.0, abs=1e-12)
    assert m["streams/cos_dist/layer_01"].item() > 0.5
    assert m["streams/eff_rank/mean"].item() == pytest.approx(
        (m["streams/eff_rank/layer_00"].item() + m["streams/eff_rank/layer_01"].item()) / 2)
    assert m["h_res/dist_identity/layer_00"].item() == 0.0 and m["h_res/dist_uniform/layer_00"].item() == 1.0
    assert m["h_res/dist_identity/layer_01"].item() == pytest.approx(0.5)  # mean of J/n (1) and I (0)
    assert m["h_res/composite_dist_uniform/layer_00"].item() == pytest.approx(1.0)  # I @ I
    assert m["h_res/composite_dist_uniform/layer_01"].item() == pytest.approx(0.0, abs=1e-12)  # J/n absorbs
    assert m["h_res/composite_dist_uniform"].item() == m["h_res/composite_dist_uniform/layer_01"].item()
    assert stream_metrics([torch.randn(B, T, C)], []) == {}  # standard / grid: nothing


@pytest.mark.parametrize("mode", ["hc", "mhc", "standard"])
def test_probe_logs_stream_telemetry_for_hc_and_mhc(mode):
    from mhc_lm.metrics import probe_model
    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
    from tests.train.helpers import TINY_MODEL

    torch.manual_seed(0)
    model = MhcLmForCausalLM(MhcLmConfig(**{**TINY_MODEL, "residual_mode": mode}))
    ids = torch.randint(0, 256, (2, 9))
    m = probe_model(model, {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}, gradients=False)
    if mode == "standard":
        assert not any(k.startswith(("streams/", "h_res/")) for k in m)
        return
    for key in ("streams/cos_dist/layer_01", "streams/eff_rank/mean", "h_res/dist_identity/layer_00",
                "h_res/dist_uniform/mean", "h_res/composite_dist_uniform"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    # at init the n streams are copies of the embedding and HC / mHC keep them identical
    assert m["streams/cos_dist/mean"] < 1e-6 and abs(m["streams/eff_rank/mean"] - 1) < 1e-3
    if mode == "hc":  # A_r = I at init
        assert m["h_res/dist_identity/mean"] == pytest.approx(0.0, abs=1e-7)
    else:  # uniform init: H_res ~ J/n
        assert m["h_res/dist_uniform/mean"] < 0.1
    off = probe_model(model, {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}, gradients=False, streams=False)
    assert not any(k.startswith(("streams/", "h_res/")) for k in off)
