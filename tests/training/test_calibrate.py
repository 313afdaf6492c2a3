"""Calibration fitted on validation: temperatures that mean what they say, and what export writes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, chi2

from common import calibration
from common.fusion import ConfidenceMap, FusionParams, softmax
from training.calibrate import (
    GATE_DECAY,
    GATE_MARGIN,
    MIXTURE_SHARE,
    RULE_VARIANTS,
    fit_abstention,
    fit_confidence_map,
    fit_fusion,
    fit_temperature,
    fit_typicality,
    risk_upper_bound,
    selective_threshold,
)
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


def _two_modalities(n: int, seed: int, scale: float = 2.0) -> Predictions:
    """Audio over-confident (its logits are 3x what its labels support), video well calibrated, all present."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 10)) * scale
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
        raw = FusionParams(rule, params.weights, None, None, params.typicality)
        probs_raw, rows = fused_for(test, test.modalities, raw)
        probs_cal, _ = fused_for(test, test.modalities, params)
        # with 3,000 held-out samples, ECE's sampling noise is about 0.01
        assert calibration.ece(probs_cal, test.labels[rows]) < 0.03, variant
        assert calibration.ece(probs_cal, test.labels[rows]) < calibration.ece(probs_raw, test.labels[rows]), variant
        if rule in ("fixed", "loglinear", "gated_loglinear"):
            assert params.weights is not None
            assert params.weights["video"] > params.weights["audio"]  # the cleaner modality weighs more


def _top_label_distorted(n: int, slope: float, offset: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose top label is right with probability sigmoid(slope * logit(c) + offset), not c."""
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(size=(n, 10)) * rng.uniform(0.5, 3.0, size=(n, 1)))
    top = probs.argmax(axis=1)
    c = probs.max(axis=1)
    p_right = 1 / (1 + np.exp(-(slope * np.log(c / (1 - c)) + offset)))
    wrong = (top + rng.integers(1, 10, size=n)) % 10  # some other class
    labels = np.where(rng.random(n) < p_right, top, wrong)
    return probs, labels


def test_fit_confidence_map_recovers_a_known_distortion_and_calibrates_held_out_answers() -> None:
    probs, labels = _top_label_distorted(4000, 0.5, 0.4, seed=0)
    cmap = fit_confidence_map(probs, labels)
    assert cmap is not None
    # a logistic regression on 4,000 answers: the standard errors are a few hundredths
    assert cmap.slope == pytest.approx(0.5, abs=0.1)
    assert cmap.offset == pytest.approx(0.4, abs=0.15)
    test_probs, test_labels = _top_label_distorted(4000, 0.5, 0.4, seed=1)
    before, after = calibration.ece(test_probs, test_labels), calibration.ece(cmap(test_probs), test_labels)
    assert after < before / 2
    assert after < 2 * calibration.ece_floor(cmap(test_probs))


def test_fit_confidence_map_leaves_calibrated_answers_about_alone_and_refuses_too_little() -> None:
    probs, labels = _top_label_distorted(4000, 1.0, 0.0, seed=2)  # calibrated: right with probability c
    cmap = fit_confidence_map(probs, labels)
    if cmap is not None:  # kept only if it helped out of sample, and then it is near the identity
        assert cmap.slope == pytest.approx(1.0, abs=0.1)
        assert cmap.offset == pytest.approx(0.0, abs=0.15)
    assert fit_confidence_map(probs[:40], labels[:40]) is None  # fewer than 10 answers per fold
    assert fit_confidence_map(probs, probs.argmax(axis=1)) is None  # every answer right: nothing to fit
    assert isinstance(fit_confidence_map(*_top_label_distorted(4000, 0.5, 0.4, seed=3)), ConfidenceMap)


def test_fit_typicality_recovers_the_class_means_covariance_and_threshold() -> None:
    rng = np.random.default_rng(3)
    k, n = 4, 20000
    means = 3.0 * np.eye(k)
    root = rng.normal(size=(k, k))
    cov = root @ root.T + np.eye(k)
    labels = rng.integers(0, k, n)
    logits = means[labels] + rng.multivariate_normal(np.zeros(k), cov, n)
    t, quantiles = fit_typicality(logits, labels)
    # each class mean from ~n/k samples: within 5 standard errors on every axis
    se = np.sqrt(np.diag(cov) / (n / k))
    assert np.all(np.abs(t.means - means) < 5 * se)
    # the sample covariance's relative error is about sqrt(2/n) = 1%
    assert np.abs(t.precision @ cov - np.eye(k)).max() < 0.1
    # Gaussian logits: the squared distance to the own class mean is chi-square with k degrees of freedom
    assert quantiles["0.99"] == pytest.approx(chi2.ppf(0.99, k), rel=0.1)
    assert t.threshold == pytest.approx(GATE_MARGIN * quantiles["0.99"])
    assert t.decay == GATE_DECAY
    assert np.mean(t.gate(logits) == 1.0) >= 0.99  # validation-like inputs keep their full weight
    far = means[:1] + 20 * np.sqrt(np.diag(cov))[None]
    assert t.gate(far)[0] < 0.5


def test_fit_typicality_fits_features_wider_than_the_classes() -> None:
    """Given the number of classes, the same fit works on an encoder's features ([n, dim], dim != classes)."""
    rng = np.random.default_rng(4)
    k, dim, n = 3, 7, 30000
    means = rng.normal(scale=4.0, size=(k, dim))
    root = rng.normal(size=(dim, dim))
    cov = root @ root.T + np.eye(dim)
    labels = rng.integers(0, k, n)
    feats = means[labels] + rng.multivariate_normal(np.zeros(dim), cov, n)
    t, quantiles = fit_typicality(feats, labels, classes=k)
    assert t.means.shape == (k, dim)
    assert t.precision.shape == (dim, dim)
    se = np.sqrt(np.diag(cov) / (n / k))
    assert np.all(np.abs(t.means - means) < 5 * se)
    assert np.abs(t.precision @ cov - np.eye(dim)).max() < 0.1
    # the distance to the nearest mean is at most the one to the own class's: chi-square with dim degrees of freedom at most
    assert quantiles["0.99"] <= chi2.ppf(0.99, dim) * 1.1
    # a label outside the classes is refused, not silently given a mean of its own
    with pytest.raises(ValueError, match="labels"):
        fit_typicality(feats, np.where(labels == 0, k, labels), classes=k)


def test_gated_rule_fitted_on_validation_ignores_a_modality_gone_wrong_where_loglinear_follows_it() -> None:
    val, test = _two_modalities(3000, 0), _two_modalities(3000, 10)
    gated, plain = fit_fusion(val, "gated_loglinear"), fit_fusion(val, "loglinear")
    gate_alone = fit_fusion(val, "gated_loglinear", mixture_share=0.0)
    assert gated.typicality is not None
    assert set(gated.typicality) == {"audio", "video"}
    # on held-out data like validation's the gate stays open: the rule is the product of experts (with its
    # blend with the mixture, which the gate does not touch)
    assert gated.mixture_share == MIXTURE_SHARE
    assert plain.mixture_share == 0.0
    _, rows = fused_for(test, test.modalities, gated)
    ungated = FusionParams("loglinear", gated.weights, gated.temperatures, gated.fused_temperatures, mixture_share=MIXTURE_SHARE)
    same = fused_for(test, test.modalities, ungated)[0]
    agree = fused_for(test, test.modalities, gated)[0].argmax(1) == same.argmax(1)
    assert agree.mean() > 0.98
    # now the audio is broken: whatever comes in, it is sure of class 0, far beyond any validation logit
    broken_audio = np.zeros_like(test.logits["audio"])
    broken_audio[:, 0] = 10 * np.abs(val.logits["audio"]).max()
    broken = Predictions({"audio": broken_audio, "video": test.logits["video"]}, test.present, test.labels)
    acc = {
        name: float((fused_for(broken, broken.modalities, p)[0].argmax(1) == broken.labels[rows]).mean())
        for name, p in (("gated", gated), ("plain", plain), ("gate alone", gate_alone))
    }
    video_alone = float((test.logits["video"].argmax(1) == test.labels).mean())
    assert acc["plain"] < 0.2  # the product follows the broken audio to class 0
    assert acc["gate alone"] == pytest.approx(video_alone, abs=0.01)  # the gate leaves the decision to the video
    # blended with the mixture, the broken audio keeps half of the mixture term: it can tip only the
    # samples whose video is nearly torn between its label and class 0, far from following it
    assert video_alone - 0.05 < acc["gated"] <= video_alone + 0.01


def _two_class(conf: list[float], right: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([[c, 1 - c] for c in conf])
    return probs, np.array([0 if ok else 1 for ok in right])


def test_selective_threshold_answers_the_most_its_risk_bound_allows() -> None:
    # 200 right at 0.95; then 100 at 0.8 with 5 wrong; then 100 at 0.6 with 50 wrong
    conf = [0.95] * 200 + [0.8] * 100 + [0.6] * 100
    right = [True] * 200 + [True] * 95 + [False] * 5 + [True] * 50 + [False] * 50
    probs, labels = _two_class(conf, right)
    t = selective_threshold(probs, labels, 0.05, 0.9)
    # three candidates: a binary search makes at most 2 tests, each at 1 - 0.1 / 2 = 95%. Answering the top
    # 300 (5 errors) has a 95% Clopper-Pearson bound under 5%; the top 400 (55 errors) does not
    assert t.tests == 2
    assert risk_upper_bound(5, 300, 0.95) == pytest.approx(beta.ppf(0.95, 6, 295))
    assert risk_upper_bound(5, 300, 0.95) <= 0.05 < risk_upper_bound(55, 400, 0.95)
    assert t.min_confidence == pytest.approx(0.8)
    assert t.coverage == pytest.approx(0.75)
    assert t.risk == pytest.approx(5 / 300)
    assert t.risk_bound == pytest.approx(risk_upper_bound(5, 300, 0.95))
    few = selective_threshold(*_two_class([0.9] * 20, [True] * 19 + [False]), 0.05, 0.9)
    assert few.min_confidence == 1.0  # 1 error in 20: the bound (19%) is far above 5%, so only certain answers
    with pytest.raises(ValueError, match="target risk"):
        selective_threshold(probs, labels, 1.5)
    with pytest.raises(ValueError, match="confidence"):
        selective_threshold(probs, labels, 0.05, 1.0)


def test_selective_threshold_search_spends_its_confidence_on_every_test() -> None:
    # 2,000 candidate thresholds: the search makes 11 tests and divides the 10% it may be wrong among them
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.0, 2000)
    t = selective_threshold(np.stack([c, 1 - c], 1), (rng.uniform(size=2000) > c).astype(int), 0.05, 0.9)
    assert t.tests == 11
    answered = np.sort(c)[::-1][: round(t.coverage * 2000)]
    assert t.min_confidence == pytest.approx(answered[-1])
    errors = round(t.risk * len(answered))
    assert t.risk_bound == pytest.approx(risk_upper_bound(errors, len(answered), 1 - 0.1 / 11))


def test_selective_threshold_keeps_its_promise_when_every_threshold_is_too_risky() -> None:
    # Errors at 6% whatever the confidence: every threshold's true risk is above the 5% target, so any
    # answer given breaks the promise, which may happen at most 10% of the time (confidence 0.9). Picking
    # the lowest of ~500 thresholds each tested at 90% (what this search replaced) answers in about 16%
    # of these draws; dividing the 10% among the search's tests keeps it far below. The bound allows 3
    # binomial standard deviations of 400 draws above 10%.
    rng = np.random.default_rng(1)
    draws, answered = 400, 0
    for _ in range(draws):
        c = rng.uniform(0.5, 1.0, 500)
        wrong = rng.uniform(size=500) < 0.06
        t = selective_threshold(np.stack([c, 1 - c], 1), wrong.astype(int), 0.05, 0.9)
        answered += t.min_confidence < 1.0
    assert answered / draws <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / draws)


def test_abstention_thresholds_per_set_of_modalities_hold_their_risk_on_held_out_draws() -> None:
    """Fitted on one draw, checked on another from the same distribution: the error rate among the answers stays
    within the target. The bound: SGR keeps the true rate at most 5% with 90% confidence, and an observed rate among
    k fresh answers has a standard deviation of at most sqrt(0.05 x 0.95 / k), so the held-out rate lies under 0.05
    plus three of those but for a chance well under 1%."""
    val = _two_modalities(2000, 3, scale=4.0)  # labels that are often near-certain, so a 5% risk is reachable
    held = _two_modalities(2000, 4, scale=4.0)
    params = fit_fusion(val, "entropy")
    thresholds = fit_abstention(val, params, 0.05)
    assert set(thresholds) == {"audio", "video", "audio+video"}
    for sub, t in thresholds.items():
        names = sub.split("+")
        probs, _ = fused_for(val, names, params)
        answered = probs.max(1) >= t.min_confidence
        assert answered.mean() == pytest.approx(t.coverage), sub  # the coverage it reports is the one it has
        fresh, fresh_rows = fused_for(held, names, params)
        given = fresh.max(1) >= t.min_confidence
        k = int(given.sum())
        assert k >= 100, sub
        assert 1 - (fresh.argmax(1) == held.labels[fresh_rows])[given].mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / k), sub
    # the noisier audio alone needs a higher threshold than both together, and answers less
    assert thresholds["audio"].min_confidence > thresholds["audio+video"].min_confidence
    assert thresholds["audio"].coverage < thresholds["audio+video"].coverage > 0.2
