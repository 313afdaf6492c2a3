"""The ablation's machinery on constructed predictions: leave-one-group-out scoring, paired intervals, the verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.avdigits import ablation
from training.evaluate import Predictions


def _predictions(n: int, seed: int) -> Predictions:
    """Two modalities whose logits point at the label with noise; the audio's logits are far too sharp (T_m pays)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    onehot = np.eye(4)[labels]
    audio = 6.0 * (onehot + rng.normal(0, 0.8, (n, 4)))
    video = 1.5 * onehot + rng.normal(0, 0.8, (n, 4))
    present = {"audio": np.ones(n, bool), "video": np.ones(n, bool)}
    return Predictions({"audio": audio, "video": video}, present, labels)


def test_paired_interval_brackets_the_mean_and_the_verdicts_follow_the_rule() -> None:
    diff = np.random.default_rng(0).normal(0.1, 0.05, 400)
    mean, low, high = ablation.paired_interval(diff, seed=0, resamples=300)
    assert low < mean < high
    assert low > 0  # a clear loss when removed
    assert ablation.verdict([mean, low, high], adding=False) == "stays"
    assert ablation.verdict([0.0, -0.1, 0.1], adding=False) == "goes"  # cannot tell: the simpler rule
    assert ablation.verdict([-0.2, -0.3, -0.1], adding=True) == "would pay"
    assert ablation.verdict([0.0, -0.1, 0.1], adding=True) == "does not pay"
    assert ablation.verdict([0.0, 0.0, 0.0], adding=False) == "no effect here"


def test_every_group_is_scored_by_layers_fitted_without_it() -> None:
    preds = _predictions(180, 1)
    groups = np.repeat(np.array(["a", "b", "c"]), 60)
    data = ablation.run(preds, groups, seed=0, resamples=200)
    served = data["variants"]["served"]["subsets"]
    assert set(served) == {"audio", "video", "audio+video"}
    assert all(c["n"] == 180 for c in served.values())  # every clip scored once, by a fit that never saw its group
    assert data["groups"] == {"a": 60, "b": 60, "c": 60}
    # the audio is far too sharp: its temperature must pay on held-out groups
    change = data["variants"]["- audio's temperature"]["subsets"]["audio"]["nll_change"]
    assert change[1] > 0
    assert data["variants"]["- audio's temperature"]["subsets"]["video"]["nll_change"] == [0.0, 0.0, 0.0]  # not its set
    # each held-out group on its own: its clips, and figures computed on them alone
    per = data["per_speaker"]
    assert list(per) == ["a", "b", "c"]
    assert all(per[g][sub]["n"] == 60 for g in per for sub in served)
    pooled_accuracy = np.mean([per[g]["audio"]["accuracy"] for g in per])  # equal groups: the mean is the pooled figure
    assert pooled_accuracy == pytest.approx(served["audio"]["accuracy"])
    assert all(0 < per[g]["audio"]["ece_floor"] < 1 for g in per)
    text = ablation.markdown({**data, "resamples": 200, "seconds": 1.0, "machine": {"cpu_count": 2}})
    assert "The served rule on each held-out speaker" in text
    assert "- audio's temperature" in text
    assert "- video's temperature" in text


def test_a_temperature_the_served_rule_leaves_at_one_is_tried_added() -> None:
    preds = _predictions(180, 1)
    groups = np.repeat(np.array(["a", "b", "c"]), 60)
    data = ablation.run(preds, groups, seed=0, resamples=200, kept=frozenset({"video"}))
    assert "- audio's temperature" not in data["variants"]
    added = data["variants"]["+ audio's temperature"]["subsets"]["audio"]["nll_change"]
    assert added[2] < 0  # adding the far too sharp audio's temperature back wins for sure
    assert ablation.verdict(added, adding=True) == "would pay"
