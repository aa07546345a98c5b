"""The `metrics` section of the run config: online stability probes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MetricsConfig:
    enabled: bool = True
    """Run the stability callbacks during training."""
    probe_every: int = 50
    """Steps between probe-batch measurements (Amax, vanished gradients, per-layer RMS)."""
    spike_window: int = 128
    """Previous steps used for the mean + k*sigma spike rule (OLMo-core uses 128)."""
    spike_sigma: float = 6.0
    """k in mean + k*sigma."""
    volatility_window: int = 50
    """Window of the moving average that loss volatility is measured against."""
    vanished_eps: list[float] = field(default_factory=lambda: [1e-4, 1e-5, 1e-6, 1e-7])
    """Thresholds of the vanished-gradient ratio (grid paper, eq. 9)."""
