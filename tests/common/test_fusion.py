"""Fusion rules on logits: per-sample weights, absent modalities, temperatures, joint's own rule."""

import numpy as np
import pytest

from common.fusion import RULES, FusionParams, entropy, fuse, log_softmax, logsumexp, softmax

CONFIDENT = np.log(np.array([0.97, 0.01, 0.01, 0.01]))  # logits whose softmax is that distribution
NOISE = np.zeros(4)  # a uniform prediction
U4 = np.full(4, 0.25)


def _logits(seed: int, n: int = 5, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)) * scale


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


@pytest.mark.parametrize("rule", [r for r in RULES if r not in ("fixed", "loglinear")])
def test_absent_modality_gets_zero_weight_and_the_other_decides(rule: str) -> None:
    a = np.stack([CONFIDENT, CONFIDENT])
    v = np.stack([CONFIDENT[::-1], NOISE])
    present = {"audio": np.array([True, False]), "video": np.array([True, True])}
    out = fuse({"audio": a, "video": v}, rule, present)
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
        weights = {"audio": 1.0} if rule in ("fixed", "loglinear") else None
        out = fuse({"audio": a}, rule, weights=weights, temperatures={"audio": 2.0}, fused_temperatures={"audio+video": 0.5})
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
    with pytest.raises(ValueError, match="positive"):
        fuse({"audio": a}, temperatures={"audio": 0.0})


def test_fusion_params_apply_exactly_what_they_hold() -> None:
    a, v = _logits(10), _logits(11)
    params = FusionParams("loglinear", {"audio": 0.4, "video": 0.6}, {"audio": 1.5, "video": 0.8}, {"audio+video": 0.7})
    direct = fuse({"audio": a, "video": v}, "loglinear", None, params.weights, params.temperatures, params.fused_temperatures)
    np.testing.assert_array_equal(params({"audio": a, "video": v}).probs, direct.probs)
