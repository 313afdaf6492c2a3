"""common.metrics against scikit-learn's, which `score` used before it ran on a serve-only install."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from common.metrics import accuracy, macro_f1


@pytest.mark.parametrize("seed", range(20))
def test_accuracy_and_macro_f1_equal_sklearns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    n = int(rng.integers(1, 60))
    y = rng.integers(0, k, n)
    # predictions from right to random, some classes never predicted or never true
    yhat = np.where(rng.random(n) < rng.random(), y, rng.integers(0, max(1, k - 1), n))
    assert accuracy(y, yhat) == pytest.approx(accuracy_score(y, yhat), abs=1e-12)
    expected = f1_score(y, yhat, average="macro", labels=list(range(k)), zero_division=0)
    assert macro_f1(y, yhat, k) == pytest.approx(expected, abs=1e-12)


def test_a_class_neither_true_nor_predicted_counts_as_zero() -> None:
    y = np.array([0, 0, 1])
    assert macro_f1(y, y, 3) == pytest.approx(2 / 3)
