"""The corruption benchmark's machinery on a small slice of the real data: logits computed once, rules scored from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.avdigits import robustness
from benchmarks.avdigits.build import build
from common.fusion import FusionParams
from tests.conftest import shared_data
from training.calibrate import fit_fusion
from training.config import TrainConfig
from training.evaluate import Predictions
from training.train import train


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A one-epoch MLA run on 120 AV-digits clips, and the clean build of 60 of them."""
    shared_data("fsdd")
    shared_data("mnist")
    root = tmp_path_factory.mktemp("robust")
    data = build(root / "av", seed=0, root=shared_data(), limit_per_speaker_digit=2)
    clean = build(root / "clean", seed=0, root=shared_data(), limit_per_speaker_digit=1, clean=True)
    run = root / "run"
    train(f"csv:{data}", run, TrainConfig(method="mla", epochs=1, batch_size=32, workers=0, owm_alpha=10.0))
    return run, f"csv:{clean}"


def _boom(*_: object) -> None:
    raise AssertionError("the model was loaded: the cached logits were not used")


def test_logits_are_computed_once_per_checkpoint(
    small: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, spec = small
    run = tmp_path / "run"
    shutil.copytree(src, run)
    held = robustness.condition_logits(run, spec)
    n = len(held["val/labels"])
    assert n == 10  # the validation speaker, one clip per digit
    for c in robustness.CORRUPTIONS:
        for level in range(len(c.severities)):
            key = f"val/{robustness.CORRUPTIONS.index(c)}/{level}"
            stored = {m for m in ("audio", "video") if f"{key}/{m}" in held}
            assert stored == ({"audio", "video"} if c.modality == "both" else {c.modality}), (c.name, level)
            for m in stored:
                assert held[f"{key}/{m}"].shape == held[f"val/clean/{m}"].shape
    assert robustness.CORRUPTIONS[0].name == "audio white noise"
    assert not np.allclose(held["test/0/5/audio"], held["test/clean/audio"])  # -10 dB changes what the model says
    # the second time, from the cache: the model is not even loaded
    monkeypatch.setattr(robustness, "model_from_checkpoint", _boom)
    again = robustness.condition_logits(run, spec)
    assert again.keys() == held.keys()
    for k in held:
        np.testing.assert_array_equal(again[k], held[k])
    # another checkpoint in the same folder is not served from the old cache
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    state = ckpt["state_dict"]
    first = next(k for k, v in state.items() if torch.is_floating_point(v))
    state[first] = state[first] + 1.0
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(AssertionError, match="cached logits were not used"):
        robustness.condition_logits(run, spec)


def test_rules_are_scored_on_every_corruption_from_the_same_logits(small: tuple[Path, str]) -> None:
    run, spec = small
    held = robustness.condition_logits(run, spec)
    y = held["val/labels"]
    ones = np.ones(len(y), bool)
    fit = Predictions({m: held[f"val/clean/{m}"] for m in ("audio", "video")}, {"audio": ones, "video": ones}, y)
    rules = {"equal": FusionParams("equal"), "gated_loglinear": fit_fusion(fit, "gated_loglinear")}
    scores = robustness.score_rules(held, rules)
    for split in ("val", "test"):
        assert set(scores[split]) == {"clean", *(c.name for c in robustness.CORRUPTIONS)}
        for c in robustness.CORRUPTIONS:
            assert len(scores[split][c.name]) == len(c.severities)
    # the clean row is the rule applied to the clean logits
    probs = rules["equal"](fit.logits).probs
    assert scores["val"]["clean"]["equal"]["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    for rule in rules:
        for cell in [scores["test"]["clean"], *scores["test"]["audio white noise"]]:
            assert 0.0 <= cell[rule]["accuracy"] <= 1.0
            assert 0.0 <= cell[rule]["ece"] <= 1.0
