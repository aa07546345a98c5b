"""Loss / gradient-norm spike detection and loss volatility (docs/stability.md, "Definitions").

Spike rule (as OLMo-core's spike monitoring): step t is a spike when

    x_t > mean(x_{t-W..t-1}) + k * std(x_{t-W..t-1})        W = 128, k = 6

i.e. only upward excursions count (a loss that drops fast is not a spike). The history is the
previous W *values*, spikes included, so a persistent level shift is flagged only in the first few steps of its
onset (until the new values widen the history's std).
No spike is declared while fewer than `min_history` previous values exist (default W, as in
OLMo-core: the rule is applied only once the full window is there), nor when the history is
flat (std < 1e-10, where any float noise would otherwise count).

Spike score: percentage of the evaluated steps that were spikes (OLMo 2's "spike score" is the
same percentage over a window); the summed excess in sigma units is kept as well.

Loss volatility: std over the last W steps of (loss_t - moving_average_W(loss)_t), where the
moving average is the trailing mean of the last W losses including t. A smooth curve (even a
steeply falling one) has low volatility; a jagged one high.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

FLAT_STD = 1e-10
"""Below this history std no spike is declared (OLMo-core's guard)."""


@dataclass
class SpikeDetector:
    """Online mean + k*sigma detector over the previous `window` values (O(window) memory)."""

    window: int = 128
    sigma: float = 6.0
    min_history: int = 128
    history: deque = field(default_factory=deque, repr=False)
    count: int = 0
    """Spikes found so far."""
    evaluated: int = 0
    """Steps at which the rule could be applied (history >= min_history)."""
    excess: float = 0.0
    """Summed (x - mean) / std - k over the spikes."""

    def update(self, value: float) -> tuple[bool, float]:
        """Feed one value; returns (is_spike, z-score against the history or nan)."""
        is_spike, z = False, float("nan")
        if not math.isfinite(value):  # a NaN/Inf loss is a spike by any measure, and stays out of the history
            if len(self.history) >= self.min_history:
                self.evaluated += 1
                self.count += 1
            return len(self.history) >= self.min_history, float("inf")
        if len(self.history) >= self.min_history:
            hist = np.fromiter(self.history, dtype=np.float64, count=len(self.history))
            mean, std = hist.mean(), hist.std()
            z = (value - mean) / std if std > 0 else (0.0 if value == mean else math.copysign(math.inf, value - mean))
            self.evaluated += 1
            if std >= FLAT_STD and value > mean + self.sigma * std:
                is_spike = True
                self.count += 1
                self.excess += min(z - self.sigma, 1e6)
        self.history.append(float(value))
        if len(self.history) > self.window:
            self.history.popleft()
        return is_spike, z

    @property
    def score(self) -> float:
        """Percentage of evaluated steps that were spikes (0 before any step was evaluated)."""
        return 100.0 * self.count / self.evaluated if self.evaluated else 0.0

    def state_dict(self) -> dict:
        return {"history": list(self.history), "count": self.count, "evaluated": self.evaluated, "excess": self.excess}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(float(v) for v in state["history"][-self.window:])
        self.count, self.evaluated, self.excess = int(state["count"]), int(state["evaluated"]), float(state["excess"])


def detect_spikes(values: Sequence[float], window: int = 128, sigma: float = 6.0,
                  min_history: int | None = None) -> list[int]:
    """Indices of `values` that are spikes under the rule above (offline twin of SpikeDetector)."""
    det = SpikeDetector(window=window, sigma=sigma, min_history=window if min_history is None else min_history)
    return [i for i, v in enumerate(values) if det.update(float(v))[0]]


class VolatilityTracker:
    """Online loss volatility: std of the last `window` residuals loss - trailing mean."""

    def __init__(self, window: int = 50):
        self.window = window
        self.values: deque = deque(maxlen=window)
        self.residuals: deque = deque(maxlen=window)

    def update(self, value: float) -> float:
        """Feed one loss; returns the current volatility (nan until two residuals exist)."""
        if not math.isfinite(value):
            return float("nan")
        self.values.append(float(value))
        self.residuals.append(value - sum(self.values) / len(self.values))
        if len(self.residuals) < 2:
            return float("nan")
        return float(np.std(np.fromiter(self.residuals, dtype=np.float64)))

    def state_dict(self) -> dict:
        return {"values": list(self.values), "residuals": list(self.residuals)}

    def load_state_dict(self, state: dict) -> None:
        self.values = deque((float(v) for v in state["values"]), maxlen=self.window)
        self.residuals = deque((float(v) for v in state["residuals"]), maxlen=self.window)


def loss_volatility(values: Sequence[float], window: int = 50) -> float:
    """Volatility at the end of the series (offline twin of VolatilityTracker)."""
    tracker, out = VolatilityTracker(window), float("nan")
    for v in values:
        out = tracker.update(float(v))
    return out
