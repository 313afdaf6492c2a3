"""Calibration figures against hand computation and scikit-learn, and the abstention threshold."""

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from common import calibration


def _two_class(conf: list[float], top_is_right: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Predictions whose top label is class 0 with confidence c; the label is 0 when right, else 1."""
    probs = np.array([[c, 1 - c] for c in conf])
    labels = np.array([0 if ok else 1 for ok in top_is_right])
    return probs, labels


def test_ece_by_hand() -> None:
    # bin (0.8, 0.867]: confidences 0.85, 0.85, accuracy 1/2 -> gap 0.35 over 2 of 4 samples
    # bin (0.933, 1.0]: confidences 0.95, 0.95, accuracy 1   -> gap 0.05 over 2 of 4 samples
    probs, labels = _two_class([0.85, 0.85, 0.95, 0.95], [True, False, True, True])
    assert calibration.ece(probs, labels) == pytest.approx(0.5 * 0.35 + 0.5 * 0.05)
    # with 2 equal-count bins the same split happens
    assert calibration.adaptive_ece(probs, labels, bins=2) == pytest.approx(0.2)


def test_a_calibrated_predictor_has_small_ece_and_an_overconfident_one_does_not() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.random(n) < conf  # right exactly as often as it says
    probs, labels = _two_class(list(conf), list(right))
    # the sampling error of each of 15 bins' accuracy is about sqrt(0.25 / (n / 8)) = 0.011
    assert calibration.ece(probs, labels) < 0.02
    over, _ = _two_class(list(np.minimum(conf + 0.2, 1.0)), list(right))
    assert calibration.ece(over, labels) > 0.1


def test_nll_and_brier_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, 200)
    assert calibration.nll(probs, labels) == pytest.approx(log_loss(labels, probs, labels=range(5)))
    # multi-class Brier: the sum over classes of the one-vs-rest binary Brier scores
    ovr = sum(brier_score_loss(labels == k, probs[:, k]) for k in range(5))
    assert calibration.brier(probs, labels) == pytest.approx(ovr)


def test_selective_threshold_keeps_the_risk_and_the_most_coverage() -> None:
    # sorted by confidence: right, right, wrong, right, right, wrong, wrong
    conf = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    probs, labels = _two_class(conf, [True, True, False, True, True, False, False])
    t = calibration.selective_threshold(probs, labels, 0.2)
    # answering the top 5 gives 1 error in 5 (0.2); the top 6, 2 in 6 (0.33)
    assert t.min_confidence == pytest.approx(0.7)
    assert t.coverage == pytest.approx(5 / 7)
    assert t.risk == pytest.approx(0.2)
    strict = calibration.selective_threshold(probs, labels, 0.0)
    assert strict.min_confidence == pytest.approx(0.95)
    assert strict.coverage == pytest.approx(2 / 7)


def test_ties_are_answered_together() -> None:
    probs, labels = _two_class([0.9, 0.8, 0.8, 0.7], [True, True, False, True])
    t = calibration.selective_threshold(probs, labels, 0.0)
    assert t.min_confidence == pytest.approx(0.9)  # cutting inside the tie at 0.8 would answer a wrong one
    nothing = calibration.selective_threshold(*_two_class([0.9], [False]), 0.0)
    assert nothing.coverage == 0.0
    assert nothing.min_confidence > 0.9
    with pytest.raises(ValueError, match="target risk"):
        calibration.selective_threshold(probs, labels, 1.5)


def test_reliability_bins() -> None:
    probs, labels = _two_class([0.85, 0.85, 0.95, 0.95], [True, False, True, True])
    rel = calibration.reliability(probs, labels)
    assert sum(rel["count"]) == 4
    filled = [i for i, c in enumerate(rel["count"]) if c]
    assert [rel["accuracy"][i] for i in filled] == [0.5, 1.0]
