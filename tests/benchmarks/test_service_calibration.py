"""The calibration benchmark's diagnosis: a temperature refitted on the scored split itself, cross-fitted."""

from __future__ import annotations

import numpy as np

from benchmarks.avdigits.service_calibration import refit_here
from common import calibration
from common.fusion import log_softmax, softmax


def _calibrated(n: int = 4000, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(0.0, 2.0, (n, k)))
    labels = np.array([rng.choice(k, p=p) for p in probs])
    return probs, labels


def test_refit_undoes_a_temperature_the_answers_were_sharpened_by() -> None:
    probs, labels = _calibrated()
    sharpened = softmax(log_softmax(np.log(probs)) / 0.5)  # twice as sure as the truth
    served = calibration.ece(sharpened, labels)
    diag = refit_here(sharpened, labels)
    assert 1.5 < diag["temperature"] < 2.5  # the factor of 2 comes back
    assert diag["ece"] < served / 2  # out of sample, it removes most of the error
    assert diag["ece"] < 2 * diag["ece_floor"]


def test_refit_leaves_calibrated_answers_alone() -> None:
    probs, labels = _calibrated(seed=1)
    diag = refit_here(probs, labels)
    assert 0.8 < diag["temperature"] < 1.25
    assert diag["ece"] < 2 * diag["ece_floor"]
