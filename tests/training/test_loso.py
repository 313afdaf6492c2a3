"""Leave one speaker out: a modality's temperature is fitted only where it pays on held-out groups, and the export
writes the choice and its evidence into the manifest."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from common.fusion import FusionParams
from common.manifest import Fusion
from training.calibrate import SERVED_LAYERS, fit_fusion, fusion_section
from training.evaluate import Predictions
from training.loso import choose_temperatures, held_out_nll, paired_interval

CLASSES = 4


def _predictions(n: int, seed: int, sharp: float) -> Predictions:
    """Two modalities whose logits are exact log-posteriors of Gaussian classes (well calibrated at T = 1), the
    audio's multiplied by `sharp` (too sure where `sharp` > 1: its temperature should be `sharp`)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    means = 1.2 * np.eye(CLASSES)

    def posterior_logits() -> np.ndarray:
        x = means[labels] + rng.normal(0, 1, (n, CLASSES))
        return x @ means.T - 0.5 * (means**2).sum(axis=1)  # log p(y | x) up to a constant, unit variance

    present = {"audio": np.ones(n, bool), "video": np.ones(n, bool)}
    return Predictions({"audio": sharp * posterior_logits(), "video": posterior_logits()}, present, labels)


def _fit(preds: Predictions, fitted: frozenset[str]) -> FusionParams:
    return fit_fusion(preds, "loglinear", layers=replace(SERVED_LAYERS, temperatures=fitted))


def test_a_temperature_is_kept_where_it_pays_and_left_at_one_where_the_logits_are_calibrated() -> None:
    preds = _predictions(1500, 0, sharp=4.0)
    groups = np.repeat(np.array(["a", "b", "c"]), 500)
    choice = choose_temperatures(preds, groups, _fit, resamples=300)
    audio, video = choice["audio"], choice["video"]
    assert set(audio.nll_change) == {"audio", "audio+video"}  # every set the modality is in, none other
    assert set(video.nll_change) == {"video", "audio+video"}
    assert audio.kept
    assert audio.nll_change["audio"][1] > 0
    # calibrated already: a fitted T near 1 cannot win on held-out groups by more than its own noise
    assert not video.kept
    assert video.nll_change["video"][1] <= 0
    assert (audio.groups, audio.resamples) == (3, 300)


def test_the_change_is_the_held_out_nll_without_the_temperature_minus_with_it() -> None:
    preds = _predictions(600, 1, sharp=3.0)
    groups = np.repeat(np.array(["a", "b"]), 300)
    every = frozenset({"audio", "video"})
    served = held_out_nll(preds, groups, lambda p: _fit(p, every))
    without = held_out_nll(preds, groups, lambda p: _fit(p, frozenset({"video"})))
    assert all(len(v) == 600 for v in served.values())  # every clip once, scored by a fit that never saw its group
    choice = choose_temperatures(preds, groups, _fit, resamples=200)
    assert choice["audio"].nll_change["audio"] == paired_interval(without["audio"] - served["audio"], 0, 200)


def test_one_group_or_mismatched_groups_are_refused() -> None:
    preds = _predictions(100, 2, sharp=2.0)
    with pytest.raises(ValueError, match="at least two groups"):
        choose_temperatures(preds, np.array(["a"] * 100), _fit)
    with pytest.raises(ValueError, match="99 group labels for 100"):
        choose_temperatures(preds, np.array(["a", "b"] * 49 + ["a"]), _fit)


def test_the_fusion_section_fits_only_the_kept_temperatures_and_records_why() -> None:
    preds = _predictions(1500, 3, sharp=4.0)
    groups = np.repeat(np.array(["(validation)", "b", "c"]), 500)
    section = fusion_section(preds, "loglinear", "constructed", groups=groups)
    cal = section["calibration"]
    assert cal["temperatures"]["video"] == 1.0  # not fitted: exactly the identity
    assert cal["temperatures"]["audio"] == pytest.approx(4.0, rel=0.15)  # fitted on all three groups
    assert cal["temperature_choice"]["audio"]["kept"]
    assert not cal["temperature_choice"]["video"]["kept"]
    fusion = Fusion.model_validate(section)  # the manifest's schema takes it as written
    assert fusion.calibration.temperature_choice["video"].groups == 3
    # without groups (no folds), every temperature is fitted, as before
    plain = fusion_section(preds, "loglinear", "constructed")["calibration"]
    assert plain["temperature_choice"] == {}
    assert plain["temperatures"]["video"] != 1.0


def test_a_manifest_that_drops_a_temperature_yet_gives_one_is_refused() -> None:
    preds = _predictions(900, 4, sharp=4.0)
    section = fusion_section(preds, "loglinear", "constructed", groups=np.repeat(np.array(["a", "b", "c"]), 300))
    section["calibration"]["temperatures"]["video"] = 1.3
    with pytest.raises(ValueError, match="drops the temperature of video"):
        Fusion.model_validate(section)
