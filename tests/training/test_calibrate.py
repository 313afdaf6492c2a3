"""Calibration fitted on validation: temperatures that mean what they say, and what export writes."""

from __future__ import annotations

import numpy as np
import pytest

from common import calibration
from common.fusion import FusionParams, softmax
from training.calibrate import RULE_VARIANTS, fit_abstention, fit_fusion, fit_temperature
from training.evaluate import Predictions, fused_for


def _sampled(logits: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """Labels drawn from softmax(logits / temperature): a model whose true temperature is known."""
    rng = np.random.default_rng(seed)
    p = softmax(logits / temperature)
    return np.array([rng.choice(p.shape[1], p=row) for row in p])


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8000, 10)) * 4
    labels = _sampled(logits, true_t, 1)
    # the MLE's relative standard error is about 1/sqrt(n * Fisher information), ~1% here
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.06)


def _two_modalities(n: int, seed: int) -> Predictions:
    """Audio over-confident (its logits are 3x what its labels support), video well calibrated, all present."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 10)) * 2
    labels = _sampled(base, 1.0, seed + 1)
    audio = 3.0 * (base + rng.normal(size=base.shape))  # noisier and over-confident
    video = base + 0.5 * rng.normal(size=base.shape)
    ones = np.ones(n, bool)
    return Predictions({"audio": audio, "video": video}, {"audio": ones, "video": ones}, labels)


def test_calibrated_rules_lower_ece_on_held_out_predictions() -> None:
    val, test = _two_modalities(3000, 0), _two_modalities(3000, 10)
    for variant, (rule, calibrated) in RULE_VARIANTS.items():
        params = fit_fusion(val, rule, calibrated)
        if not calibrated:
            assert params.temperatures is None, variant
            continue
        assert params.temperatures is not None
        assert params.temperatures["audio"] > 2.0  # it found the over-confidence ...
        assert 0.7 < params.temperatures["video"] < 1.5  # ... and left the calibrated one roughly alone
        raw = FusionParams(rule, params.weights)
        probs_raw, rows = fused_for(test, test.modalities, raw)
        probs_cal, _ = fused_for(test, test.modalities, params)
        # with 3,000 held-out samples, ECE's sampling noise is about 0.01
        assert calibration.ece(probs_cal, test.labels[rows]) < 0.03, variant
        assert calibration.ece(probs_cal, test.labels[rows]) < calibration.ece(probs_raw, test.labels[rows]), variant
        if rule in ("fixed", "loglinear"):
            assert params.weights is not None
            assert params.weights["video"] > params.weights["audio"]  # the cleaner modality weighs more


def test_abstention_threshold_holds_its_risk_on_validation() -> None:
    val = _two_modalities(2000, 3)
    params = fit_fusion(val, "entropy")
    t = fit_abstention(val, params, 0.05)
    probs, rows = fused_for(val, val.modalities, params)
    answered = probs.max(1) >= t.min_confidence
    assert answered.mean() == pytest.approx(t.coverage)
    assert 1 - (probs.argmax(1) == val.labels[rows])[answered].mean() <= 0.05
    assert 0 < t.coverage < 1
