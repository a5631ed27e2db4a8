"""Metric code against small cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.reporting.classification import confusion_matrix, per_class_scores, summary, worst_mistakes


def test_confusion_matrix_and_scores_by_hand() -> None:
    # truth:      0 0 0 1 1 2
    # prediction: 0 0 1 1 2 2
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = per_class_scores(cm)
    # class 0: P = 2/2, R = 2/3, F1 = 0.8; class 1: P = 1/2, R = 1/2, F1 = 0.5; class 2: P = 1/2, R = 1, F1 = 2/3
    assert s["precision"] == pytest.approx([1.0, 0.5, 0.5])
    assert s["recall"] == pytest.approx([2 / 3, 0.5, 1.0])
    assert s["f1"] == pytest.approx([0.8, 0.5, 2 / 3])
    assert s["support"].tolist() == [3, 2, 1]


def test_never_predicted_class_scores_zero_not_nan() -> None:
    s = per_class_scores(confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2))
    assert s["precision"].tolist() == [0.5, 0.0] and s["f1"][1] == 0.0


def test_summary_accuracy_loss_and_macro() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    y = np.array([0, 1, 1, 0])
    out = summary(y, probs, ["cat", "dog"])
    assert out["test_accuracy"] == pytest.approx(0.75)
    assert out["test_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.5])))
    assert out["per_class"]["dog"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(0.6667, abs=1e-4),
        "support": 2,
    }
    assert out["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_worst_mistakes_are_the_most_confident_wrong_ones() -> None:
    probs = np.array([[0.1, 0.9], [0.4, 0.6], [0.99, 0.01], [0.3, 0.7]])
    y = np.array([0, 0, 0, 0])
    assert worst_mistakes(y, probs, 2).tolist() == [0, 3]
