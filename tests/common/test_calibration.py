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


def test_reliability_bins() -> None:
    probs, labels = _two_class([0.85, 0.85, 0.95, 0.95], [True, False, True, True])
    rel = calibration.reliability(probs, labels)
    assert sum(rel["count"]) == 4
    filled = [i for i, c in enumerate(rel["count"]) if c]
    assert [rel["accuracy"][i] for i in filled] == [0.5, 1.0]


def test_ece_floor_is_the_noise_of_a_perfectly_calibrated_model() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.2, 1.0, 500)
    probs, _ = _two_class(list(conf), [True] * 500)
    floor = calibration.ece_floor(probs)
    # outcomes drawn from the model's own confidences: the measured ECE scatters around the floor
    draws = [calibration.ece(probs, np.where(rng.random(500) < conf, 0, 1)) for _ in range(100)]
    assert abs(np.mean(draws) - floor) < 0.01
    # 500 predictions spread over 15 bins: a few points, shrinking like 1/sqrt(n)
    assert 0.02 < floor < 0.08
    big, _ = _two_class(list(rng.uniform(0.2, 1.0, 20_000)), [True] * 20_000)
    assert calibration.ece_floor(big) < floor / 3
