"""Cross-fitting by speaker: each fold holds one speaker and its drawings out; out-of-fold predictions pool with validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.calibrate import load_out_of_fold, pool
from training.crossfit import fold_rows, speakers
from training.evaluate import Predictions


def _row(split: str, speaker: str, image: str) -> dict[str, str]:
    return {
        "audio": f"{speaker}-{image}.wav",
        "video": f"{image}.mp4",
        "label": "1",
        "split": split,
        "speaker": speaker,
        "drawing": image,
    }


ROWS = [
    _row("train", "ann", "i1"),
    _row("train", "ann", "i2"),
    _row("train", "bob", "i3"),
    _row("train", "bob", "i1"),  # shares ann's drawing
    _row("train", "espeak-ng en+m1 p50 s150", "i2"),  # a synthetic voice on ann's drawing
    _row("train", "espeak-ng en+m2 p40 s120", "i4"),
    _row("val", "val-speaker", "v1"),
    _row("test", "test-speaker", "t1"),
]


def test_a_fold_holds_its_speaker_and_every_row_on_its_drawings_out() -> None:
    assert speakers(ROWS) == ["ann", "bob"]  # synthetic voices are never a fold
    fold = fold_rows(ROWS, "ann")
    by_split = {s: [(r["speaker"], r["drawing"]) for r in fold if r["split"] == s] for s in ("train", "val", "test")}
    assert by_split["test"] == [("ann", "i1"), ("ann", "i2")]  # the held-out speaker is what the fold predicts
    assert by_split["train"] == [("bob", "i3"), ("espeak-ng en+m2 p40 s120", "i4")]  # nothing on i1 or i2 trains
    assert by_split["val"] == [("val-speaker", "v1")]  # validation as it was; the original test split is not used
    assert not any(r["speaker"] == "test-speaker" for r in fold)


def _preds(n: int, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    return Predictions(
        {m: rng.normal(size=(n, 3)) for m in ("audio", "video")},
        {m: rng.random(n) > 0.2 for m in ("audio", "video")},
        rng.integers(0, 3, n),
    )


def test_out_of_fold_predictions_load_and_pool_with_validation(tmp_path: Path) -> None:
    oof = _preds(6, 1)
    arrays: dict[str, Any] = {f"logits_{m}": oof.logits[m] for m in oof.modalities}
    arrays.update({f"present_{m}": oof.present[m] for m in oof.modalities})
    np.savez_compressed(tmp_path / "oof.npz", labels=oof.labels, speaker=np.array(["ann"] * 3 + ["bob"] * 3), **arrays)
    loaded, about = load_out_of_fold(tmp_path, ["audio", "video"])
    assert "2 training speakers (ann, bob), n=6" in about
    val = _preds(4, 2)
    both = pool(val, loaded)
    np.testing.assert_array_equal(both.labels, np.concatenate([val.labels, oof.labels]))
    np.testing.assert_array_equal(both.logits["video"][4:], oof.logits["video"])
    np.testing.assert_array_equal(both.present["audio"][:4], val.present["audio"])
    with pytest.raises(ValueError, match="no predictions for image"):
        load_out_of_fold(tmp_path, ["audio", "image"])
    with pytest.raises(ValueError, match=r"no oof\.npz"):
        load_out_of_fold(tmp_path / "missing", ["audio"])


def test_conformal_sets_hold_the_true_label_at_least_as_often_as_promised() -> None:
    """Split conformal on exchangeable draws: over 200 calibration/test splits, the sets' mean coverage is at least
    1 - alpha = 0.95 in expectation; the mean of 200 splits of 200 test answers has a standard deviation near 0.0015,
    so 0.94 is about seven of them below the promise (a broken quantile, off by one rank or using alpha wrongly on
    small sets, lands well under it or far over it: the second bound)."""
    from training.calibrate import conformal_quantile

    rng = np.random.default_rng(0)
    coverage, sizes = [], []
    for _ in range(200):
        logits = rng.normal(size=(400, 5)) + 2.0 * np.eye(5)[labels := rng.integers(0, 5, 400)]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        q = conformal_quantile(probs[:200], labels[:200], 0.05)
        inside = probs[200:] >= 1.0 - q
        coverage.append(inside[np.arange(200), labels[200:]].mean())
        sizes.append(inside.sum(axis=1).mean())
    assert np.mean(coverage) >= 0.94
    assert np.mean(coverage) <= 0.97  # not every label every time: the sets say something
    assert 1.0 < np.mean(sizes) < 5.0
    assert conformal_quantile(probs[:5], labels[:5], 0.05) == 1.0  # 5 answers cannot promise 95%: every label


def test_folds_train_side_by_side_on_a_share_of_the_cores_and_a_failure_is_named(tmp_path: Path) -> None:
    import os
    import sys

    from training.crossfit import train_folds

    say = "import os, sys; print(os.environ.get('OMP_NUM_THREADS', 'unset')); sys.exit(int(sys.argv[1]))"
    commands = [(name, [sys.executable, "-c", say, "0"]) for name in ("ann", "bob")]
    train_folds(commands, 2, tmp_path)
    share = str(max(1, (os.cpu_count() or 1) // 2))
    assert {(tmp_path / f"{n}.log").read_text().strip() for n in ("ann", "bob")} == {share}
    with pytest.raises(SystemExit, match=r"fold\(s\) bob failed to train"):
        train_folds([("ann", [sys.executable, "-c", say, "0"]), ("bob", [sys.executable, "-c", say, "3"])], 2, tmp_path)
