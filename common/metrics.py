"""Accuracy and macro-F1 in numpy: `score` (common.evaluation) runs in `mla calibrate` on a serve-only install,
which has no scikit-learn. Equal to sklearn.metrics' accuracy_score and f1_score(average="macro", labels=range(k),
zero_division=0) (tests/common/test_metrics.py checks them against it)."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The share of predictions equal to their label."""
    return float(np.mean(np.asarray(labels) == np.asarray(predicted)))


def macro_f1(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """The mean over the classes 0..n_classes-1 of F1 = 2 TP / (2 TP + FP + FN); 0 for a class never given nor true."""
    y, yhat = np.asarray(labels), np.asarray(predicted)
    tp = np.bincount(y[y == yhat], minlength=n_classes)[:n_classes]
    given = np.bincount(yhat, minlength=n_classes)[:n_classes]
    true = np.bincount(y, minlength=n_classes)[:n_classes]
    denominator = given + true  # 2 TP + FP + FN
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(f1.mean())
