"""The `metrics` section of the run config: online stability probes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mhc_lm.config_utils import ConfigError


@dataclass
class MetricsConfig:
    enabled: bool = True
    """Run the stability callbacks during training."""
    probe_every: int = 50
    """Steps between probe-batch measurements (Amax, vanished gradients, per-layer RMS); 0 = never."""
    spike_window: int = 128
    """Previous steps used for the mean + k*sigma spike rule (OLMo-core uses 128)."""
    spike_sigma: float = 6.0
    """k in mean + k*sigma."""
    spike_min_history: int | None = None
    """No spike is declared before this many previous steps exist; default (null): spike_window, as OLMo-core."""
    volatility_window: int = 50
    """Window of the moving average that loss volatility is measured against."""
    vanished_eps: list[float] = field(default_factory=lambda: [1e-4, 1e-5, 1e-6, 1e-7])
    """Thresholds of the vanished-gradient ratio (grid paper, eq. 9)."""
    vanished_exclude: list[str] = field(default_factory=lambda: ["embed_tokens", "lm_head"])
    """Parameter-name substrings left out of the vanished ratio (embedding rows of unseen tokens get exact zeros)."""
    probe_amax: bool = True
    """Record hc/mhc mixing matrices on the probe batch and log their Amax gains."""
    probe_at_init: bool = True
    """Also probe before the first step (a metrics.jsonl line with step 0 and only probe values)."""
    probe_gradients: bool = True
    """Backward on the probe batch: vanished ratio, gradient std and per-layer gradient RMS."""
    update_ratio: bool = True
    """On probe steps, log ||update|| / ||params|| of that step per decoder layer (holds one parameter copy for a step)."""

    def __post_init__(self) -> None:
        if self.probe_every < 0:
            raise ConfigError(f"metrics.probe_every: must be >= 0, got {self.probe_every}")
        if self.spike_min_history is None:
            self.spike_min_history = self.spike_window
        if self.spike_window < 2 or not 2 <= self.spike_min_history <= self.spike_window:
            raise ConfigError(f"metrics.spike_window ({self.spike_window}) must be >= 2 and metrics.spike_min_history "
                              f"({self.spike_min_history}) in [2, spike_window]")
        if not (math.isfinite(self.spike_sigma) and self.spike_sigma > 0) or self.volatility_window < 2:
            raise ConfigError(f"metrics.spike_sigma must be a finite number > 0 (got {self.spike_sigma}) and "
                              f"metrics.volatility_window >= 2 (got {self.volatility_window})")
        if any(not 0 < e < 1 for e in self.vanished_eps):
            raise ConfigError(f"metrics.vanished_eps: every eps must be in (0, 1), got {self.vanished_eps}")
