"""Spike rule and loss volatility: known answers on synthetic series."""

import math

import numpy as np
import pytest

from mhc_lm.metrics import SpikeDetector, VolatilityTracker, detect_spikes, loss_volatility


def noisy_curve(n: int, seed: int = 0) -> np.ndarray:
    """A falling loss curve with Gaussian noise (std 0.01)."""
    rng = np.random.default_rng(seed)
    return 5.0 - np.linspace(0, 1, n) + rng.normal(0, 0.01, n)


def test_planted_spikes_found_exactly():
    loss = noisy_curve(1000)
    planted = [150, 400, 401, 402, 777, 999]  # a 3-step burst included
    for i in planted:
        loss[i] += 0.5
    assert detect_spikes(loss, window=128, sigma=6.0, min_history=32) == planted


def test_no_false_positives_on_noise():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        assert detect_spikes(rng.normal(3.0, 0.05, 5000)) == []
        assert detect_spikes(noisy_curve(3000, seed)) == []


def test_rule_is_mean_plus_k_sigma_of_previous_window():
    hist = [1.0, 3.0] * 64  # mean 2, std 1 over the previous 128
    det = SpikeDetector(window=128, sigma=6.0, min_history=32)
    for v in hist:
        det.update(v)
    assert det.update(7.9)[0] is False  # 2 + 6 * 1 = 8
    det2 = SpikeDetector(window=128, sigma=6.0, min_history=32)
    for v in hist:
        det2.update(v)
    spike, z = det2.update(8.1)
    assert spike and z == pytest.approx(6.1)


def test_downward_jumps_and_short_history_are_not_spikes():
    loss = noisy_curve(300)
    loss[200] -= 2.0  # a sudden drop
    loss[10] += 5.0  # before min_history
    assert detect_spikes(loss, min_history=32) == []


def test_window_forgets_old_values():
    # a level shift is flagged at its onset only: the new level enters the history, and after
    # k shifted values mean = 1 + k/128, std = sqrt(k/128 (1 - k/128)): k = 4 lifts the bar above 2
    values = [1.0 + 0.001 * (i % 2) for i in range(200)] + [2.0 + 0.001 * (i % 2) for i in range(400)]
    assert detect_spikes(values, window=128) == [200, 201, 202, 203]


def test_score_count_and_nan():
    det = SpikeDetector(window=16, sigma=6.0, min_history=4)
    for v in [1.0, 1.1, 0.9, 1.0]:
        det.update(v)
    assert det.evaluated == 0
    det.update(1.05)
    det.update(9.0)  # spike
    spike, z = det.update(float("nan"))  # NaN counts as a spike and stays out of the history
    assert spike and math.isinf(z) and len(det.history) == 6
    assert det.count == 2 and det.evaluated == 3
    assert det.score == pytest.approx(100 * 2 / 3)


def test_volatility_known_answers():
    assert loss_volatility([3.0] * 100, window=10) == 0.0
    # a straight line has a constant residual against its trailing mean: volatility 0 once the window is full
    assert loss_volatility(list(np.linspace(5, 1, 200)), window=10) == pytest.approx(0.0, abs=1e-12)
    # window 2 on 0, 2, 0, 2: residuals +1 / -1 -> std 1
    assert loss_volatility([0.0, 2.0] * 20, window=2) == pytest.approx(1.0)
    tracker = VolatilityTracker(window=5)
    assert math.isnan(tracker.update(1.0))
    assert math.isnan(loss_volatility([], window=5))


def test_olmo_defaults_full_window_and_flat_history():
    # OLMo-core applies the rule only once the whole window is there, and never on a flat history
    det = SpikeDetector()
    assert (det.window, det.sigma, det.min_history) == (128, 6.0, 128)
    values = [1.0] * 127 + [1.0 + 1e-9]  # flat: float noise above the mean is not a spike
    assert detect_spikes(values + [1.0] * 10) == []
    values = noisy_curve(300)
    values[100] += 5.0  # before the window is full: not evaluated
    values[250] += 5.0
    assert detect_spikes(values) == [250]


def test_state_dict_round_trip_continues_exactly():
    values = noisy_curve(400)
    values[300] += 3.0
    full = SpikeDetector(window=64, min_history=64)
    outs = [full.update(v) for v in values]
    first = SpikeDetector(window=64, min_history=64)
    for v in values[:200]:
        first.update(v)
    second = SpikeDetector(window=64, min_history=64)
    second.load_state_dict(first.state_dict())
    assert [second.update(v) for v in values[200:]] == outs[200:]
    assert (second.count, second.evaluated, second.excess) == (full.count, full.evaluated, full.excess)
