"""Official GLUE metrics (Wang et al., 2018, Table 1), computed with scikit-learn / scipy.

CoLA: Matthews correlation; MRPC, QQP: accuracy and F1 of the positive class (label 1);
STS-B: Pearson and Spearman correlation; MNLI: accuracy on matched and mismatched dev;
SST-2, QNLI, RTE, WNLI: accuracy.

A task's single *score* (for the GLUE average) is the mean of its metrics, and for MNLI the
mean of matched and mismatched accuracy, as on the GLUE leaderboard.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .tasks import TaskSpec, split_label


def _nan_to_zero(x: float) -> float:
    # A constant prediction or label vector makes a correlation undefined; GLUE scores it 0.
    return 0.0 if x is None or math.isnan(x) else float(x)


def compute_metrics(spec: TaskSpec, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """Metrics of one dev split: predictions are class ids (or scores for STS-B)."""
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if preds.shape != gold.shape or preds.ndim != 1:
        raise ValueError(f"{spec.name}: predictions {preds.shape} and labels {gold.shape} must be 1-D and equal")
    if len(gold) == 0:
        raise ValueError(f"{spec.name}: no examples to score")
    out: dict[str, float] = {}
    for metric in spec.metrics:
        if metric == "accuracy":
            out[metric] = float(accuracy_score(gold, preds))
        elif metric == "f1":
            out[metric] = float(f1_score(gold, preds, pos_label=1, average="binary", zero_division=0.0))
        elif metric == "mcc":
            out[metric] = _nan_to_zero(matthews_corrcoef(gold, preds))
        elif metric in ("pearson", "spearman"):
            if np.all(preds == preds[0]) or np.all(gold == gold[0]):
                out[metric] = 0.0
            elif metric == "pearson":
                out[metric] = _nan_to_zero(stats.pearsonr(preds.astype(float), gold.astype(float)).statistic)
            else:
                out[metric] = _nan_to_zero(stats.spearmanr(preds, gold).statistic)
        else:
            raise ValueError(f"{spec.name}: unknown metric {metric!r}")
    return out


def flatten_split_metrics(spec: TaskSpec, per_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'validation_matched': {'accuracy': a}, ...} -> {'accuracy_m': a, ...} (single split: unchanged)."""
    if len(per_split) == 1:
        return dict(next(iter(per_split.values())))
    flat = {}
    for split, metrics in per_split.items():
        for name, value in metrics.items():
            flat[f"{name}_{split_label(split)}"] = value
    return flat


def task_score(metrics: dict[str, float]) -> float:
    """Mean of a task's metrics: the per-task number entering the GLUE average."""
    if not metrics:
        raise ValueError("no metrics to average")
    return float(np.mean(list(metrics.values())))
