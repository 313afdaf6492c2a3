"""Fusion rules on logits: per-sample weights, absent modalities, temperatures, joint's own rule."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.fusion import (
    GATED_RULES,
    RULES,
    TEMPERATURE_BOUNDS,
    WEIGHTED_RULES,
    ConfidenceMap,
    FusionParams,
    Typicality,
    answers,
    entropy,
    fuse,
    log_softmax,
    logsumexp,
    softmax,
)

CONFIDENT = np.log(np.array([0.97, 0.01, 0.01, 0.01]))  # logits whose softmax is that distribution
NOISE = np.zeros(4)  # a uniform prediction
U4 = np.full(4, 0.25)


def _logits(seed: int, n: int = 5, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)) * scale


def _everywhere_typical(classes: int = 4) -> Typicality:
    """A gate that never closes: every logit vector is within its threshold."""
    return Typicality(np.zeros((classes, classes)), np.eye(classes), threshold=1e300, decay=1.0)


def _extras(rule: str, names: tuple[str, ...] = ("audio", "video")) -> dict[str, object]:
    """The weights and typicality a rule needs, set so that they change nothing."""
    return {
        "weights": dict.fromkeys(names, 1.0) if rule in WEIGHTED_RULES else None,
        "typicality": dict.fromkeys(names, _everywhere_typical()) if rule in GATED_RULES else None,
    }


def test_entropy_weights_are_softmax_of_negative_entropy_per_sample() -> None:
    a, v = _logits(0), _logits(1)
    out = fuse({"audio": a, "video": v})
    for i in range(5):
        ha, hv = entropy(softmax(a[i])), entropy(softmax(v[i]))
        expect_a = np.exp(-ha) / (np.exp(-ha) + np.exp(-hv))
        assert out.weights["audio"][i] == pytest.approx(expect_a)
        assert out.weights["audio"][i] + out.weights["video"][i] == pytest.approx(1.0)


def test_noise_video_gets_low_weight_whatever_else_is_in_the_batch() -> None:
    # Sample 0: confident audio, uniform ("noise") video. The rest of the batch varies:
    # the weight of sample 0 must not move, unlike the authors' batch-averaged rule.
    alone = fuse({"audio": CONFIDENT[None], "video": NOISE[None]}).weights["video"][0]
    for others in (CONFIDENT, NOISE):
        a = np.stack([CONFIDENT, NOISE, NOISE, NOISE])
        v = np.stack([NOISE, others, others, others])
        w = fuse({"audio": a, "video": v}).weights
        assert w["video"][0] == pytest.approx(alone)
        assert w["video"][0] < 0.25
    batch_a = fuse({"audio": np.stack([CONFIDENT, NOISE]), "video": np.stack([NOISE, CONFIDENT])}, "batch_entropy")
    batch_b = fuse({"audio": np.stack([CONFIDENT, NOISE]), "video": np.stack([NOISE, NOISE])}, "batch_entropy")
    # The batch rule gives sample 0 a video weight that depends on sample 1: the defect we avoid.
    assert batch_a.weights["video"][0] != pytest.approx(batch_b.weights["video"][0])


def test_mixture_rules_mix_probabilities_and_stay_distributions() -> None:
    a = np.stack([CONFIDENT, NOISE])
    v = np.stack([NOISE, CONFIDENT[::-1]])
    for rule in ("entropy", "energy", "equal", "batch_entropy"):
        out = fuse({"audio": a, "video": v}, rule)
        w = out.weights
        np.testing.assert_allclose(out.probs, w["audio"][:, None] * softmax(a) + w["video"][:, None] * softmax(v))
        np.testing.assert_allclose(out.probs.sum(axis=1), 1.0)
        assert out.probs[0].argmax() == 0
        assert out.probs[1].argmax() == 3


def test_energy_weights_are_softmax_of_logsumexp() -> None:
    a, v = _logits(2), _logits(3)
    w = fuse({"audio": a, "video": v}, "energy").weights
    ea, ev = logsumexp(a), logsumexp(v)
    np.testing.assert_allclose(w["audio"], np.exp(ea) / (np.exp(ea) + np.exp(ev)))


@pytest.mark.parametrize("rule", RULES)
def test_absent_modality_gets_zero_weight_and_the_other_decides(rule: str) -> None:
    a = np.stack([CONFIDENT, CONFIDENT])
    v = np.stack([CONFIDENT[::-1], NOISE])
    present = {"audio": np.array([True, False]), "video": np.array([True, True])}
    out = fuse({"audio": a, "video": v}, rule, present, **_extras(rule))  # type: ignore[arg-type]
    assert out.weights["audio"][1] == 0.0
    assert out.weights["video"][1] == 1.0
    np.testing.assert_allclose(out.probs[1], U4)


def test_fixed_equal_and_loglinear_rules() -> None:
    a, v = CONFIDENT[None], NOISE[None]
    out = fuse({"audio": a, "video": v}, "fixed", weights={"audio": 3.0, "video": 1.0})
    assert out.weights["audio"][0] == pytest.approx(0.75)
    np.testing.assert_allclose(out.probs[0], 0.75 * softmax(CONFIDENT) + 0.25 * U4)
    assert fuse({"audio": a, "video": v}, "equal").weights["audio"][0] == pytest.approx(0.5)
    # a product of experts: log q = sum_m w_m log p_m, renormalised
    b = _logits(4, n=1)
    out = fuse({"audio": a, "video": b}, "loglinear", weights={"audio": 0.3, "video": 0.7})
    np.testing.assert_allclose(out.probs[0], softmax(0.3 * log_softmax(a[0]) + 0.7 * log_softmax(b[0])))
    for rule in ("fixed", "loglinear"):
        with pytest.raises(ValueError, match=f"{rule} fusion needs"):
            fuse({"audio": a, "video": v}, rule)
    with pytest.raises(ValueError, match="unknown fusion rule"):
        fuse({"audio": a}, "max")


def test_logit_sum_is_joint_trainings_own_prediction() -> None:
    a, v = _logits(5), _logits(6)
    out = fuse({"audio": a, "video": v}, "logit_sum")
    np.testing.assert_allclose(out.probs, softmax(a + v))
    # It can disagree with a mixture, which is why joint is scored by it: large but split audio
    # logits win the sum, while the mixture follows the more certain video.
    a, v = np.array([[5.0, 4.9, 0.0]]), np.array([[0.0, 0.0, 3.0]])
    assert fuse({"audio": a, "video": v}, "logit_sum").probs.argmax() == 0
    assert fuse({"audio": a, "video": v}, "entropy").probs.argmax() == 2


def test_single_modality_is_its_own_calibrated_prediction_under_every_rule() -> None:
    a = _logits(7, n=3)
    for rule in RULES:
        out = fuse(
            {"audio": a},
            rule,
            temperatures={"audio": 2.0},
            fused_temperatures={"audio+video": 0.5},
            **_extras(rule, ("audio",)),  # type: ignore[arg-type]
        )
        expect = softmax(a) if rule == "logit_sum" else softmax(a / 2.0)  # logit_sum is calibrated by T_S alone
        np.testing.assert_allclose(out.probs, expect, err_msg=rule)
        np.testing.assert_allclose(out.weights["audio"], 1.0)


def test_temperatures_one_reproduce_the_raw_rule_and_others_act_where_stated() -> None:
    a, v = _logits(8), _logits(9)
    raw = fuse({"audio": a, "video": v})
    same = fuse({"audio": a, "video": v}, temperatures={"audio": 1.0, "video": 1.0}, fused_temperatures={"audio+video": 1.0})
    np.testing.assert_allclose(same.probs, raw.probs)
    # per-modality temperatures act on each modality's logits before weighting
    hot = fuse({"audio": a, "video": v}, temperatures={"audio": 2.0, "video": 0.5})
    np.testing.assert_allclose(hot.modality_probs["audio"], softmax(a / 2.0))
    np.testing.assert_allclose(hot.modality_probs["video"], softmax(v / 0.5))
    # the fused temperature acts on the fused log-probabilities of samples with exactly that set present
    present = {"audio": np.array([True, True, True, False, True]), "video": np.ones(5, bool)}
    base = fuse({"audio": a, "video": v}, present=present)
    sharp = fuse({"audio": a, "video": v}, present=present, fused_temperatures={"audio+video": 0.5})
    both = present["audio"]
    np.testing.assert_allclose(sharp.probs[both], softmax(np.log(base.probs[both]) / 0.5))
    np.testing.assert_allclose(sharp.probs[~both], base.probs[~both])
    assert np.all(sharp.probs[both].max(1) >= base.probs[both].max(1))  # T < 1 sharpens, never changes the argmax
    np.testing.assert_array_equal(sharp.probs.argmax(1), base.probs.argmax(1))
    lo, hi = TEMPERATURE_BOUNDS
    for t in (0.0, lo * 0.99, hi * 1.01, np.inf):  # outside the stated bounds: refused, not clipped
        with pytest.raises(ValueError, match="must lie in"):
            fuse({"audio": a}, temperatures={"audio": t})
        with pytest.raises(ValueError, match="must lie in"):
            fuse({"audio": a, "video": v}, fused_temperatures={"audio+video": t})
    for t in (lo, hi):  # the bounds themselves are temperatures a fit may return
        fuse({"audio": a}, temperatures={"audio": t})


def test_fusion_params_apply_exactly_what_they_hold() -> None:
    a, v = _logits(10), _logits(11)
    params = FusionParams("loglinear", {"audio": 0.4, "video": 0.6}, {"audio": 1.5, "video": 0.8}, {"audio+video": 0.7})
    direct = fuse({"audio": a, "video": v}, "loglinear", None, params.weights, params.temperatures, params.fused_temperatures)
    np.testing.assert_array_equal(params({"audio": a, "video": v}).probs, direct.probs)


def test_confidence_map_moves_the_top_label_only_and_never_changes_it() -> None:
    probs = softmax(_logits(12, n=400, scale=2.0))
    np.testing.assert_allclose(ConfidenceMap(1.0, 0.0)(probs), probs, atol=1e-12)  # the identity
    cmap = ConfidenceMap(0.5, 0.3)
    out = cmap(probs)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_array_equal(out.argmax(axis=1), probs.argmax(axis=1))
    rows, top = np.arange(len(probs)), probs.argmax(axis=1)
    c = probs[rows, top]
    platt = 1 / (1 + np.exp(-(0.5 * np.log(c / (1 - c)) + 0.3)))
    floor_ = np.sort(probs, axis=1)[:, -2] / (1 - c + np.sort(probs, axis=1)[:, -2])
    np.testing.assert_allclose(out[rows, top], np.maximum(platt, floor_), rtol=1e-8)
    # unsure answers go up, sure ones down: no temperature does both
    assert np.any(platt > c)
    assert np.any(platt < c)
    # the other classes keep their proportions
    others, mapped_others = probs.copy(), out.copy()
    others[rows, top] = 0
    mapped_others[rows, top] = 0
    np.testing.assert_allclose(mapped_others, others * ((1 - out[rows, top]) / (1 - c))[:, None], atol=1e-12)
    # the floor: a map that would pull a top label under its runner-up stops just above it, wherever the two lie
    for row in ([0.55, 0.44, 0.01], [0.44, 0.55, 0.01], [0.2, 0.05, 0.35, 0.4]):
        p = np.array([row])
        tight = ConfidenceMap(1.0, -5.0)(p)
        assert tight[0].argmax() == p[0].argmax(), row
        assert np.sort(tight[0])[-1] == pytest.approx(np.sort(tight[0])[-2], rel=1e-8), row
    # on many weak, unsure answers pulled down hard, no label changes
    weak = softmax(_logits(15, n=2000, scale=0.3))
    np.testing.assert_array_equal(ConfidenceMap(2.0, -3.0)(weak).argmax(axis=1), weak.argmax(axis=1))
    np.testing.assert_allclose(ConfidenceMap(0.5, 2.0)(weak).sum(axis=1), 1.0)
    for slope, offset in ((0.0, 0.0), (-1.0, 0.0), (1.0, float("nan"))):
        with pytest.raises(ValueError, match="finite positive slope"):
            ConfidenceMap(slope, offset)


def test_confidence_map_is_not_extrapolated_below_what_it_was_fitted_on() -> None:
    """Below `lowest` the map runs straight to the uniform answer, which keeps confidence 1/K: a Platt fit that
    lifts unsure answers would otherwise give an answer that says nothing the confidence of one that says a little."""
    k = 10
    cmap = ConfidenceMap(0.56, 0.1, lowest=0.18)  # the default model's audio map, about
    uniform = np.full((1, k), 1.0 / k)
    np.testing.assert_allclose(cmap(uniform), uniform)  # a guess stays a guess
    assert ConfidenceMap(0.56, 0.1)(uniform)[0].max() > 0.2  # where the Platt fit alone would say more
    # from the uniform answer up through `lowest` and on: continuous and increasing in c
    c = np.linspace(1.0 / k + 1e-6, 0.95, 400)
    probs = np.column_stack([c, np.repeat(((1 - c) / (k - 1))[:, None], k - 1, axis=1)])
    mapped = cmap(probs)[:, 0]
    assert np.all(np.diff(mapped) > 0)
    below, above = c < 0.18, c >= 0.18

    def platt(x: np.ndarray | float) -> np.ndarray:
        return 1 / (1 + np.exp(-(0.56 * np.log(np.divide(x, np.subtract(1, x))) + 0.1)))

    np.testing.assert_allclose(mapped[above], platt(c[above]), rtol=1e-12)
    slope_below = (platt(0.18) - 0.1) / (0.18 - 0.1)
    np.testing.assert_allclose(mapped[below], 0.1 + (c[below] - 0.1) * slope_below, rtol=1e-9)
    assert mapped[above][0] - mapped[below][-1] < 2 * slope_below * (c[1] - c[0])  # no jump at `lowest`
    with pytest.raises(ValueError, match="lowest"):
        ConfidenceMap(1.0, 0.0, lowest=1.0)


def test_confidence_maps_act_on_their_set_of_modalities_only() -> None:
    a, v = _logits(13), _logits(14)
    present = {"audio": np.ones(5, bool), "video": np.array([True, False, True, False, True])}
    base = fuse({"audio": a, "video": v}, present=present, temperatures={"audio": 1.5})
    cmap = ConfidenceMap(0.5, 0.3)
    mapped = fuse({"audio": a, "video": v}, present=present, temperatures={"audio": 1.5}, confidence_maps={"audio": cmap})
    alone = ~present["video"]
    np.testing.assert_allclose(mapped.probs[alone], cmap(base.probs[alone]))  # the rows sent audio alone
    np.testing.assert_allclose(mapped.probs[~alone], base.probs[~alone])  # the pairs are not touched
    np.testing.assert_allclose(mapped.modality_probs["audio"], base.modality_probs["audio"])  # nor the per-modality detail
    params = FusionParams("entropy", None, {"audio": 1.5}, None, None, {"audio": cmap})
    np.testing.assert_array_equal(params({"audio": a, "video": v}, present).probs, mapped.probs)


def _gate(means: np.ndarray, threshold: float = 2.0, decay: float = 0.5) -> Typicality:
    return Typicality(means, np.eye(means.shape[1]), threshold, decay)


def test_typicality_is_the_mahalanobis_distance_to_the_nearest_class_mean_and_its_gate() -> None:
    means = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    precision = np.diag([1.0, 0.25, 4.0])  # a covariance of diag(1, 4, 0.25)
    t = Typicality(means, precision, threshold=2.0, decay=0.5)
    z = np.array([[4.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 12.0]])
    # by hand: row 0 is 1 from class 0 along the axis of variance 4; row 1 is 4 from each class
    # mean along one axis (variances 1, 4, 0.25: 16, 4, 64); row 2 is 8 from class 2's along the axis of variance 0.25
    expect = np.array([1.0 / 4.0, min(16.0, 16.0 / 4.0, 16.0 * 4.0), 64.0 * 4.0])
    np.testing.assert_allclose(t.distance(z), expect)
    gate = t.gate(z)
    np.testing.assert_allclose(gate, [1.0, np.exp(-(4.0 / 2.0 - 1) / 0.5), np.exp(-(256 / 2.0 - 1) / 0.5)])
    assert gate[0] == 1.0
    assert 0.0 < gate[2] < gate[1] < 1.0


def test_gated_loglinear_is_loglinear_while_every_modality_is_typical() -> None:
    a, v = _logits(12), _logits(13)
    w = {"audio": 0.4, "video": 0.6}
    typical = {m: _everywhere_typical() for m in ("audio", "video")}
    gated = fuse({"audio": a, "video": v}, "gated_loglinear", weights=w, typicality=typical)
    plain = fuse({"audio": a, "video": v}, "loglinear", weights=w)
    np.testing.assert_allclose(gated.probs, plain.probs)
    np.testing.assert_allclose(gated.weights["audio"], 0.4)
    np.testing.assert_allclose(gated.gates["audio"], 1.0)  # type: ignore[index]
    with pytest.raises(ValueError, match="gated_loglinear fusion needs a typicality"):
        fuse({"audio": a, "video": v}, "gated_loglinear", weights=w)


def test_a_confidently_wrong_atypical_modality_loses_its_veto() -> None:
    # Validation put each class's logits near 3 * one-hot. The audio here is far outside that
    # (logit 40 on class 1: a "sure" answer to an input it never saw); the video is typical and
    # moderately sure of class 0. A product of experts follows the audio's veto; the gate lifts it.
    means = 3.0 * np.eye(4)
    gates = {"audio": _gate(means), "video": _gate(means)}
    audio = np.array([[0.0, 40.0, 0.0, 0.0]])
    video = np.array([[3.0, 1.0, 0.0, 0.0]])
    w = {"audio": 0.5, "video": 0.5}
    plain = fuse({"audio": audio, "video": video}, "loglinear", weights=w)
    gated = fuse({"audio": audio, "video": video}, "gated_loglinear", weights=w, typicality=gates)
    assert plain.probs[0].argmax() == 1
    assert gated.probs[0].argmax() == 0
    assert gated.gates is not None
    assert gated.gates["audio"][0] < 1e-6
    assert gated.gates["video"][0] == 1.0
    # the reported weights are each modality's share of the exponents, summing to 1
    assert gated.weights["audio"][0] + gated.weights["video"][0] == pytest.approx(1.0)
    assert gated.weights["video"][0] > 0.99
    # the audio's share is not handed to the video: the fused distribution is the video's
    # own, flattened by its weight 0.5, not sharpened to weight 1
    np.testing.assert_allclose(gated.probs[0], softmax(0.5 * log_softmax(video[0])), rtol=1e-6)


def test_an_atypical_single_modality_is_less_sure_but_keeps_its_answer() -> None:
    means = 3.0 * np.eye(4)
    z = np.array([[3.0, 0.0, 0.0, 0.0], [30.0, 0.0, 0.0, 0.0]])
    out = fuse({"audio": z}, "gated_loglinear", weights={"audio": 1.0}, typicality={"audio": _gate(means)})
    own = softmax(z)
    np.testing.assert_allclose(out.probs[0], own[0])  # typical: its own calibrated prediction
    assert out.probs[1].argmax() == own[1].argmax() == 0
    assert out.probs[1].max() < own[1].max()  # atypical: less sure


def test_mixture_share_blends_the_product_with_the_equal_weight_mixture() -> None:
    a, v = _logits(20, n=50), _logits(21, n=50)
    temps, weights = {"audio": 1.5, "video": 0.8}, {"audio": 0.4, "video": 0.6}
    gates = dict.fromkeys(("audio", "video"), _everywhere_typical())
    for rule, typicality in (("loglinear", None), ("gated_loglinear", gates)):
        plain = fuse({"audio": a, "video": v}, rule, None, weights, temps, {"audio+video": 0.7}, typicality)
        zero = fuse({"audio": a, "video": v}, rule, None, weights, temps, {"audio+video": 0.7}, typicality, mixture_share=0.0)
        np.testing.assert_array_equal(zero.probs, plain.probs)  # share 0 is the product, unchanged
        s = 0.3
        blended = fuse({"audio": a, "video": v}, rule, None, weights, temps, {"audio+video": 0.7}, typicality, mixture_share=s)
        pa, pv = softmax(a / 1.5), softmax(v / 0.8)
        log_q = (1 - s) * log_softmax(0.4 * np.log(pa) + 0.6 * np.log(pv)) + s * np.log((pa + pv) / 2)
        np.testing.assert_allclose(blended.probs, softmax(log_q / 0.7), rtol=1e-10)
        np.testing.assert_allclose(blended.weights["audio"], (1 - s) * 0.4 + s * 0.5, rtol=1e-12)
        np.testing.assert_allclose(blended.weights["audio"] + blended.weights["video"], 1.0)


def test_mixture_share_softens_the_veto_of_a_modality_sure_a_label_is_wrong() -> None:
    # audio: leans to class 1 and deems class 0 unlikely (0.01); video: sure of class 0 (0.9), not of 1 (0.02)
    audio = np.log(np.array([[0.01, 0.5, 0.25, 0.24]]))
    video = np.log(np.array([[0.9, 0.02, 0.04, 0.04]]))
    product = fuse({"audio": audio, "video": video}, "loglinear", weights={"audio": 0.5, "video": 0.5})
    # the product follows the veto: 0.01 x 0.9 < 0.5 x 0.02
    assert product.probs.argmax() == 1
    blend = fuse({"audio": audio, "video": video}, "loglinear", weights={"audio": 0.5, "video": 0.5}, mixture_share=0.4)
    # the mixture gives class 0 0.455 against 0.26: 0.6 x 0.5 log(0.009 / 0.01) + 0.4 log(0.455 / 0.26) > 0
    assert blend.probs.argmax() == 0
    # one modality sent: the mixture of one is itself, so the blend changes nothing there
    alone = fuse({"audio": audio, "video": video}, "loglinear", {"video": np.array([False])}, {"audio": 0.5, "video": 0.5})
    alone_blend = fuse(
        {"audio": audio, "video": video},
        "loglinear",
        {"video": np.array([False])},
        {"audio": 0.5, "video": 0.5},
        mixture_share=0.4,
    )
    np.testing.assert_allclose(alone_blend.probs, alone.probs, rtol=1e-10)
    np.testing.assert_allclose(alone.probs, softmax(audio), rtol=1e-10)


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5, float("nan")])
def test_mixture_share_out_of_range_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="mixture_share"):
        fuse({"audio": _logits(1)}, "loglinear", weights={"audio": 1.0}, mixture_share=share)


def test_mixture_share_is_refused_on_a_rule_that_already_mixes() -> None:
    with pytest.raises(ValueError, match="mixture_share"):
        fuse({"audio": _logits(1), "video": _logits(2)}, "entropy", mixture_share=0.3)


def test_mixture_share_softens_a_veto_but_does_not_bound_it() -> None:
    """The docs' claim, checked: a label the product gives 1e-30 keeps (1 - s) x log 1e-30 nats in the blend, and the
    mixture's term cannot make up for it, so an overwhelming veto still wins."""
    audio = np.log(np.array([[1e-30, 1.0 - 2e-30, 1e-30, 0.0 + 1e-300]]))  # sure class 0 is wrong
    video = np.log(np.array([[0.97, 0.01, 0.01, 0.01]]))  # sure class 0 is right
    blend = fuse({"audio": audio, "video": video}, "loglinear", weights={"audio": 0.5, "video": 0.5}, mixture_share=0.4)
    assert blend.probs.argmax() != 0


class _FixedGate:
    def __init__(self, value: float) -> None:
        self.value = value

    def gate(self, logits: np.ndarray) -> np.ndarray:
        return np.full(len(logits), self.value)


def test_a_modality_the_gate_shuts_out_has_no_say_in_the_mixture_either() -> None:
    """The review's case: with the audio's gate at exactly 0, the blend must answer as the video alone does."""
    rng = np.random.default_rng(5)
    audio, video = rng.normal(size=(200, 4)) * 4, rng.normal(size=(200, 4)) * 4
    weights = {"audio": 0.5, "video": 0.5}
    gates = {"audio": _FixedGate(0.0), "video": _FixedGate(1.0)}
    shut = fuse({"audio": audio, "video": video}, "gated_loglinear", None, weights, None, None, gates, mixture_share=0.4)
    alone = fuse({"video": video}, "loglinear", None, {"video": 1.0})
    np.testing.assert_array_equal(shut.probs.argmax(1), alone.probs.argmax(1))
    np.testing.assert_allclose(shut.weights["audio"], 0.0, atol=1e-12)  # no share in the product nor in the mixture
    # every gate at 0: nothing is trusted, the answer is uniform
    none = {"audio": _FixedGate(0.0), "video": _FixedGate(0.0)}
    flat = fuse({"audio": audio, "video": video}, "gated_loglinear", None, weights, None, None, none, mixture_share=0.4)
    np.testing.assert_allclose(flat.probs, 0.25, rtol=1e-12)


@settings(max_examples=300, deadline=None)
@example(  # CI's find: the others held 1e-300 between them, and the clipped top said they held 1e-12
    probs=np.array([[0.0] * 5, [1.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5]), slope=0.125, offset=-5.0, lowest=0.0
)
@example(  # a lead of one ulp, which rescaling the others by (1 - c') / rest would round into a tie
    probs=np.array([[0.0] * 5, [0.0, 0.0, 0.9999999999999999, 1.0, 0.0], [1e-300, 0.0, 0.0, 0.6670123663605604, 0.0]]),
    slope=0.05,
    offset=0.0,
    lowest=0.0,
)
@given(
    probs=hnp.arrays(np.float64, (3, 5), elements=st.floats(0.0, 1.0)),
    slope=st.floats(0.05, 20.0),
    offset=st.floats(-10.0, 10.0),
    lowest=st.floats(0.0, 0.99),
)
def test_every_confidence_map_row_is_a_distribution_with_the_same_label(
    probs: np.ndarray, slope: float, offset: float, lowest: float
) -> None:
    """Property: whatever the map and the rows (one-hot rows, ties and zeros included), each output row is
    non-negative, sums to 1 and keeps its top label."""
    p = probs + 1e-300
    p[0] = np.eye(5)[2]  # a row certain of one class: the rest had nothing to share
    p = p / p.sum(axis=1, keepdims=True)
    out = ConfidenceMap(slope, offset, lowest)(p)
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    top = p.argmax(axis=1)
    # the label stays on top: strictly where it was ahead, and at least level where it was tied (then argmax may pick
    # either, as it could before the map)
    assert np.all(out[np.arange(3), top] >= out.max(axis=1) * (1 - 1e-12))
    ahead = np.sort(p, axis=1)[:, -2] < p.max(axis=1)
    np.testing.assert_array_equal(out.argmax(axis=1)[ahead], top[ahead])


def test_a_threshold_of_one_never_answers() -> None:
    """1.0 means "never answer": a confidence that rounds to 1.0 in float64 does not slip through."""
    certain = softmax(np.array([[800.0, 0.0, 0.0, 0.0]]))
    assert certain.max() == 1.0
    assert not answers(certain.max(axis=1), 1.0).any()
    assert answers(np.array([0.5, 0.97]), 0.9).tolist() == [False, True]
    assert answers(np.array([0.0]), 0.0).all()  # a threshold of 0 answers everything
