"""The parity rule: logit differences judged against the logits' scale, every failure listed."""

import numpy as np
import pytest

from common.parity import FP16, FP32, Tolerance, compare

U = 2.0**-24


def _logits(scale: float, seed: int = 0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal((16, 6))).astype(np.float32)


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0, 1000.0])
def test_float32_round_off_passes_at_any_logit_scale(scale: float) -> None:
    ref = _logits(scale)
    # Round-off of a deep float32 network, well above what one kernel does: 100 units of the output's scale.
    noisy = ref + (100 * U * max(1.0, float(np.abs(ref).max())) * np.random.default_rng(1).uniform(-1, 1, ref.shape))
    figures, failures = compare("x", {"logits": ref}, {"logits": noisy.astype(np.float32)}, FP32)
    assert failures == []
    assert figures["max_rel_logit_diff"] <= 1e-4


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_a_real_mismatch_fails_at_any_logit_scale(scale: float) -> None:
    ref = _logits(scale)
    wrong = ref.copy()
    wrong[3, 2] += 0.01 * max(1.0, float(np.abs(ref).max()))  # one logit off by a percent of the scale
    _, failures = compare("audio.onnx", {"logits": ref}, {"logits": wrong}, FP32)
    assert len(failures) == 1
    assert "audio.onnx" in failures[0]
    assert "scale" in failures[0]


def test_every_failure_is_listed() -> None:
    ref = _logits(1.0)
    _, failures = compare("v", {"logits": ref, "extra": ref}, {"logits": ref[:3]}, FP32)
    assert len(failures) == 2  # a missing output and a wrong shape
    _, failures = compare("v", {"logits": ref}, {"logits": np.full_like(ref, np.nan)}, FP32)
    assert failures == ["v: output 'logits' holds NaN or infinity"]


def test_fp16_judges_probabilities() -> None:
    ref = _logits(3.0)
    close = ref + np.float32(0.005)  # a shift of every logit moves no probability
    assert compare("x", {"logits": ref}, {"logits": close}, FP16)[1] == []
    flipped = ref.copy()
    flipped[0] = flipped[0, ::-1]
    assert compare("x", {"logits": ref}, {"logits": flipped}, FP16)[1]


def test_tolerances_written_by_older_exports_still_apply() -> None:
    old = Tolerance(**{"max_abs_logit_diff": 1e-4})
    ref = _logits(1.0)
    assert compare("x", {"logits": ref}, {"logits": ref + np.float32(1e-3)}, old)[1]
    assert compare("x", {"logits": ref}, {"logits": ref}, old)[1] == []
