import numpy as np
import pytest

from common.fusion import entropy, entropy_weights, fuse, softmax

CONFIDENT = np.array([0.97, 0.01, 0.01, 0.01])
NOISE = np.full(4, 0.25)


def test_entropy_weights_are_softmax_of_negative_entropy_per_sample() -> None:
    rng = np.random.default_rng(0)
    a = softmax(rng.normal(size=(5, 4)) * 3)
    v = softmax(rng.normal(size=(5, 4)) * 3)
    w = entropy_weights({"audio": a, "video": v})
    for i in range(5):
        ha, hv = entropy(a[i]), entropy(v[i])
        expect_a = np.exp(-ha) / (np.exp(-ha) + np.exp(-hv))
        assert w["audio"][i] == pytest.approx(expect_a)
        assert w["audio"][i] + w["video"][i] == pytest.approx(1.0)


def test_noise_video_gets_low_weight_whatever_else_is_in_the_batch() -> None:
    # Sample 0: confident audio, uniform ("noise") video. The rest of the batch varies:
    # the weight of sample 0 must not move, unlike the authors' batch-averaged rule.
    alone_a, alone_v = CONFIDENT[None], NOISE[None]
    w_alone = entropy_weights({"audio": alone_a, "video": alone_v})
    for others_video in (CONFIDENT, NOISE):
        a = np.stack([CONFIDENT, NOISE, NOISE, NOISE])
        v = np.stack([NOISE, others_video, others_video, others_video])
        w = entropy_weights({"audio": a, "video": v})
        assert w["video"][0] == pytest.approx(w_alone["video"][0])
        assert w["video"][0] < 0.25
    _, w_batch_a = fuse({"audio": np.stack([CONFIDENT, NOISE]), "video": np.stack([NOISE, CONFIDENT])}, "batch_entropy")
    _, w_batch_b = fuse({"audio": np.stack([CONFIDENT, NOISE]), "video": np.stack([NOISE, NOISE])}, "batch_entropy")
    # The batch rule gives sample 0 a video weight that depends on sample 1: the defect we avoid.
    assert w_batch_a["video"][0] != pytest.approx(w_batch_b["video"][0])


def test_fused_is_weighted_sum_of_probabilities_and_a_distribution() -> None:
    a = np.stack([CONFIDENT, NOISE])
    v = np.stack([NOISE, CONFIDENT[::-1]])
    fused, w = fuse({"audio": a, "video": v})
    np.testing.assert_allclose(fused, w["audio"][:, None] * a + w["video"][:, None] * v)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)
    assert fused[0].argmax() == 0
    assert fused[1].argmax() == 3


def test_absent_modality_gets_zero_weight() -> None:
    a = np.stack([CONFIDENT, CONFIDENT])
    v = np.stack([CONFIDENT[::-1], NOISE])
    present = {"audio": np.array([True, False]), "video": np.array([True, True])}
    for rule in ("entropy", "equal", "batch_entropy"):
        fused, w = fuse({"audio": a, "video": v}, rule, present)
        assert w["audio"][1] == 0.0
        assert w["video"][1] == 1.0
        np.testing.assert_allclose(fused[1], NOISE)


def test_fixed_and_equal_rules() -> None:
    a, v = CONFIDENT[None], NOISE[None]
    fused, w = fuse({"audio": a, "video": v}, "fixed", weights={"audio": 3.0, "video": 1.0})
    assert w["audio"][0] == pytest.approx(0.75)
    np.testing.assert_allclose(fused[0], 0.75 * CONFIDENT + 0.25 * NOISE)
    _, w = fuse({"audio": a, "video": v}, "equal")
    assert w["audio"][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fixed fusion needs"):
        fuse({"audio": a, "video": v}, "fixed")
    with pytest.raises(ValueError, match="unknown fusion rule"):
        fuse({"audio": a}, "max")


def test_single_modality_is_its_own_prediction() -> None:
    a = softmax(np.random.default_rng(1).normal(size=(3, 4)))
    fused, w = fuse({"audio": a})
    np.testing.assert_allclose(fused, a)
    np.testing.assert_allclose(w["audio"], 1.0)
