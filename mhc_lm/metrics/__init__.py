"""Stability metrics (docs/stability.md, "Definitions"): spikes, loss volatility, Amax gain, vanished gradients.

    from mhc_lm.metrics import build_callbacks, detect_spikes, amax_gain, composite, vanished_ratio, probe_model

Pure functions take tensors / numbers; `build_callbacks(config)` gives the callbacks that the
launcher hands to `mhc_lm.train.Trainer` (this package imports nothing of `mhc_lm.train`);
`probe_model` is shared with the offline `python -m evals.stability`. JSONL names are listed in
docs/stability.md.
"""

from .amax import amax_gain, composite, gain_summary, inf_norm, mixing_amax_metrics
from .callbacks import ProbeCallback, StabilityCallback, UpdateRatioCallback, build_callbacks
from .config import MetricsConfig
from .probe import probe_model
from .spikes import SpikeDetector, VolatilityTracker, detect_spikes, loss_volatility
from .update import snapshot, update_ratios
from .vanished import eps_key, vanished_counts, vanished_from_counts, vanished_ratio

__all__ = [
    "MetricsConfig", "build_callbacks", "StabilityCallback", "ProbeCallback", "UpdateRatioCallback", "probe_model",
    "snapshot", "update_ratios",
    "SpikeDetector", "VolatilityTracker", "detect_spikes", "loss_volatility",
    "amax_gain", "inf_norm", "composite", "gain_summary", "mixing_amax_metrics",
    "vanished_ratio", "vanished_counts", "vanished_from_counts", "eps_key",
]
