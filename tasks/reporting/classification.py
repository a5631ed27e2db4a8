"""Classification metrics from labels and predictions: pure numpy, checked against hand-made cases."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = how many images of true class ``t`` were predicted as ``p``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # A class never predicted (or never present) has precision (recall) 0 by convention, not NaN.
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class."""
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_divide(tp, cm.sum(axis=0).astype(np.float64))
    recall = _safe_divide(tp, cm.sum(axis=1).astype(np.float64))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(axis=1)}


def summary(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, macro and per-class precision/recall/F1 of predicted probabilities."""
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    scores = per_class_scores(cm)
    picked = probs[np.arange(len(y_true)), y_true.astype(np.int64)]
    return {
        "test_accuracy": float((y_pred == y_true).mean()),
        "test_loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()),
        "macro_precision": float(scores["precision"].mean()),
        "macro_recall": float(scores["recall"].mean()),
        "macro_f1": float(scores["f1"].mean()),
        "per_class": {
            name: {
                "precision": round(float(scores["precision"][i]), 4),
                "recall": round(float(scores["recall"][i]), 4),
                "f1": round(float(scores["f1"][i]), 4),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


def worst_mistakes(y_true: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` wrong predictions made with the highest confidence."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = probs[wrong, y_pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:k]]
