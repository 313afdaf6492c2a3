"""Real speech no one here recorded, sent audio-only to the committed default model: recognised well above chance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.espeak_digits import _answered, ask, binomial_tail, score, synthesise
from benchmarks.live import start, stop
from tests.conftest import ROOT


def test_binomial_tail_by_hand() -> None:
    assert binomial_tail(3, 0, 0.5) == pytest.approx(1.0)
    assert binomial_tail(3, 2, 0.5) == pytest.approx(4 / 8)
    assert binomial_tail(10, 10, 0.1) == pytest.approx(1e-10)


def test_score_counts_answers_and_says_so_when_none_was_given() -> None:
    clips = [(Path(f"{d}.wav"), d, "v") for d in (1, 2, 3, 4)]
    answers = [{"label": lab, "abstained": ab} for lab, ab in (("1", False), ("2", True), ("9", False), ("4", True))]
    result = score(clips, answers)
    assert (result["accuracy"], result["coverage"], result["accuracy_among_answered"]) == (0.75, 0.5, 0.5)
    assert "answered (did not abstain on) 50% of them, with accuracy 0.500" in _answered(result)
    none = score(clips, [{**a, "abstained": True} for a in answers])
    assert none["coverage"] == 0
    assert none["accuracy_among_answered"] is None
    json.loads(json.dumps(none, allow_nan=False))  # valid JSON: no NaN
    assert "abstained on every one" in _answered(none)


@pytest.mark.slow
def test_espeak_digits_are_recognised_well_above_chance(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is absent (Debian package espeak-ng; make test installs it)")
    clips = synthesise(tmp_path)
    live = start(ROOT / "models" / "default", tmp_path / "server")
    try:
        answers = ask(live.url, clips)
    finally:
        stop(live)
    result = score(clips, answers)
    assert result["n"] == 240
    # "Well above chance" as arithmetic: guessing (1 in 10) would do this well less than once in a million tries.
    assert result["p_value_vs_chance"] < 1e-6, result
    assert all(a["model"]["name"] == "default" and set(a["modalities"]) == {"audio"} for a in answers)
