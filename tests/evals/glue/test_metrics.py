"""Official GLUE metrics against values computed by hand."""

import math

import pytest

from evals.glue.metrics import compute_metrics, flatten_split_metrics, task_score
from evals.glue.tasks import get_task

# confusion matrix TP=3, TN=2, FP=1, FN=2 (positive class 1)
LABELS = [1, 1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 0, 0, 0, 1]


def test_mcc_on_a_small_confusion_matrix():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 2) / sqrt(4*5*3*4)
    expected = 4 / math.sqrt(240)
    assert compute_metrics(get_task("cola"), PREDS, LABELS) == {"mcc": pytest.approx(expected, abs=1e-12)}


def test_accuracy_and_f1_of_the_positive_class():
    m = compute_metrics(get_task("mrpc"), PREDS, LABELS)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # 2TP / (2TP + FP + FN)
    assert list(m) == ["accuracy", "f1"]


def test_pearson_and_spearman():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 5.0, 4.0, 5.0]
    m = compute_metrics(get_task("stsb"), x, y)
    assert m["pearson"] == pytest.approx(6 / math.sqrt(60), abs=1e-12)  # sum dxdy / sqrt(sum dx^2 sum dy^2)
    # ranks of y with ties averaged: [1, 2.5, 4.5, 2.5, 4.5]; Pearson of ranks = 7 / sqrt(90)
    assert m["spearman"] == pytest.approx(7 / math.sqrt(90), abs=1e-12)


def test_undefined_correlations_score_zero():
    assert compute_metrics(get_task("cola"), [1, 1, 1, 1], [0, 1, 0, 1])["mcc"] == 0.0
    assert compute_metrics(get_task("stsb"), [2.0, 2.0, 2.0], [1.0, 3.0, 5.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_perfect_and_inverted_predictions():
    assert compute_metrics(get_task("cola"), [0, 1, 0, 1], [0, 1, 0, 1])["mcc"] == pytest.approx(1.0)
    assert compute_metrics(get_task("cola"), [1, 0, 1, 0], [0, 1, 0, 1])["mcc"] == pytest.approx(-1.0)
    assert compute_metrics(get_task("mnli"), [0, 1, 2, 2], [0, 1, 2, 0]) == {"accuracy": 0.75}


def test_mnli_matched_mismatched_and_task_score():
    spec = get_task("mnli")
    flat = flatten_split_metrics(spec, {"validation_matched": {"accuracy": 0.8},
                                        "validation_mismatched": {"accuracy": 0.6}})
    assert flat == {"accuracy_m": 0.8, "accuracy_mm": 0.6}
    assert task_score(flat) == pytest.approx(0.7)
    assert task_score({"accuracy": 0.5, "f1": 0.7}) == pytest.approx(0.6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="rte"):
        compute_metrics(get_task("rte"), [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(get_task("rte"), [], [])
