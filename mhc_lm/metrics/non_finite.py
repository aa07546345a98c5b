"""Non-finite values met by the stability probe end the run as a divergence, not a traceback.

Non-finite weights or activations make the probe's `linalg.svd` (spectral norms of the mixing
matrices) and friends raise; the probe runs after the optimizer step, before the next loss check
would see them. `probe_or_diverge` turns that, and any non-finite probe metric, into the
trainer's divergence (DIVERGED written, `TrainingDiverged`: exit code 3). The trainer is passed
in (its `_diverged` and `unwrapped_model`), so this package does not import the training one.
"""

from __future__ import annotations

import math

import torch


def _model_is_finite(model) -> bool:
    return all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters() if p.numel())


def probe_or_diverge(probe, trainer, step: int) -> dict:
    """`probe(trainer)`; non-finite weights, a probe that fails on non-finite values, or a
    non-finite probe metric end the run as a divergence (DIVERGED, exit 3)."""
    try:
        metrics = probe(trainer)
    except (RuntimeError, ValueError) as err:  # torch.linalg.LinAlgError is a RuntimeError
        if "non-finite" in str(err) or not _model_is_finite(trainer.unwrapped_model):
            trainer._diverged(float("nan"), float("nan"), f"non-finite values in the stability probe at step {step} "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]})", step=step)
        raise
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        trainer._diverged(float("nan"), float("nan"), f"non-finite values in the stability probe at step {step} "
                          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})", step=step)
    return metrics
