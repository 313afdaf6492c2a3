"""The AV-digits builder on a small slice of the real shared data."""

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.avdigits.build import SPEAKER_TEST, build
from tests.conftest import shared_data
from training.data.specs import parse_spec


def test_builder_splits_by_speaker_and_image(tmp_path: Path) -> None:
    shared_data("fsdd")
    shared_data("mnist")
    manifest = build(tmp_path / "av", seed=0, root=shared_data(), limit_per_speaker_digit=2)
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 10 * 2
    speakers = {s: {r["speaker"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert speakers["test"] == {SPEAKER_TEST}
    assert len(speakers["train"]) == 4
    assert not (speakers["train"] & speakers["val"]) and not (speakers["train"] & speakers["test"])  # noqa: PT018
    images = [r["drawing"] for r in rows]
    assert len(set(images)) == len(images)  # every image used once, so splits share none
    assert {r["video_corruption"] for r in rows} <= {"", "blur", "occlusion"}
    assert all(-5.0 <= float(r["snr_db"]) <= 20.0 for r in rows)
    parsed = parse_spec(f"csv:{manifest}")
    assert parsed.labels == [str(d) for d in range(10)]
    again = build(tmp_path / "again", seed=0, root=shared_data(), limit_per_speaker_digit=2)
    assert again.read_text() == manifest.read_text()  # seeded: the same recipe every time


def test_clean_build_has_no_corruption_and_the_same_samples(tmp_path: Path) -> None:
    shared_data("fsdd")
    shared_data("mnist")
    noisy = build(tmp_path / "noisy", seed=0, root=shared_data(), limit_per_speaker_digit=1)
    clean = build(tmp_path / "clean", seed=0, root=shared_data(), limit_per_speaker_digit=1, clean=True)
    with noisy.open() as f, clean.open() as g:
        a, b = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [(r["label"], r["split"], r["speaker"], r["drawing"]) for r in a] == [
        (r["label"], r["split"], r["speaker"], r["drawing"]) for r in b
    ]
    assert all(r["snr_db"] == "" and r["video_corruption"] == "" for r in b)
    assert any(r["video_corruption"] for r in a)  # the ordinary build of the same 60 samples damages some


def test_missing_shared_data_is_reported(tmp_path: Path) -> None:
    from benchmarks.avdigits.build import MissingSharedDataError

    with pytest.raises(MissingSharedDataError, match="absent"):
        build(tmp_path / "x", root=tmp_path / "nothing")


def test_benchmark_skips_cleanly_without_shared_data(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "MLA_SHARED_DATA": str(tmp_path / "absent"), "MLA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.avdigits.run", "--runs", str(tmp_path / "runs")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout
    assert "absent" in proc.stdout


def test_synthetic_voices_join_training_only_and_leave_the_recordings_alone(tmp_path: Path) -> None:
    import shutil

    from benchmarks.avdigits.build import SNR_RANGE
    from benchmarks.espeak_digits import VARIANTS
    from common.media import decode_audio

    shared_data("fsdd")
    shared_data("mnist")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is absent (Debian package espeak-ng; make test installs it)")
    plain = build(tmp_path / "plain", seed=0, root=shared_data(), limit_per_speaker_digit=1)
    more = build(tmp_path / "more", seed=0, root=shared_data(), limit_per_speaker_digit=1, synthetic_per_digit=2)
    with plain.open() as f, more.open() as g:
        a, b = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert b[: len(a)] == a  # the recordings' rows (and their noise, drawn from the seed's stream) unchanged
    assert all((plain.parent / r["audio"]).read_bytes() == (more.parent / r["audio"]).read_bytes() for r in a)
    synth = b[len(a) :]
    assert sorted(r["label"] for r in synth) == sorted(str(d) for d in range(10) for _ in range(2))
    assert {r["split"] for r in synth} == {"train"}
    voices = [r["speaker"].split()[1] for r in synth]
    assert all(r["speaker"].startswith("espeak-ng ") for r in synth)
    assert not {v.split("+")[1] for v in voices} & set(VARIANTS)  # never a voice make bench-espeak tests with
    train_images = {(r["label"], r["drawing"]) for r in a if r["split"] == "train"}
    assert all((r["label"], r["drawing"]) in train_images for r in synth)  # a training image of the same digit
    assert all(SNR_RANGE[0] <= float(r["snr_db"]) <= SNR_RANGE[1] for r in synth)
    for r in synth[:3]:
        wave = decode_audio(more.parent / r["audio"], 8000)
        assert 0.5 < float(np.abs(wave).max()) <= 0.91  # spoken, noised and peak-normalised as the recordings are


def test_flite_voices_follow_the_espeak_ones_and_leave_every_earlier_row_alone(tmp_path: Path) -> None:
    import shutil

    from benchmarks.avdigits.build import (
        FLITE_DIPHONE_F0,
        FLITE_DIPHONE_VOICES,
        FLITE_F0_SHIFT,
        FLITE_STRETCH,
        FLITE_VOICES,
        SNR_RANGE,
    )
    from common.media import decode_audio
    from training.crossfit import speakers

    shared_data("fsdd")
    shared_data("mnist")
    for tool in ("espeak-ng", "flite"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is absent (Debian package {tool})")
    espeak = build(tmp_path / "espeak", seed=0, root=shared_data(), limit_per_speaker_digit=1, synthetic_per_digit=1)
    both = build(
        tmp_path / "both", seed=0, root=shared_data(), limit_per_speaker_digit=1, synthetic_per_digit=1, flite_per_digit=2
    )
    with espeak.open() as f, both.open() as g:
        a, b = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert b[: len(a)] == a  # the recordings' and espeak-ng's rows unchanged: flite draws from a stream of its own
    assert all((espeak.parent / r["audio"]).read_bytes() == (both.parent / r["audio"]).read_bytes() for r in a)
    flite = b[len(a) :]
    assert sorted(r["label"] for r in flite) == sorted(str(d) for d in range(10) for _ in range(2))
    assert {r["split"] for r in flite} == {"train"}
    for r in flite:
        tool, voice, pace, pitch = r["speaker"].split()
        assert tool == "flite"
        assert voice in FLITE_VOICES
        assert FLITE_STRETCH[0] <= float(pace[1:]) <= FLITE_STRETCH[1]
        lo, hi = FLITE_DIPHONE_F0 if voice in FLITE_DIPHONE_VOICES else FLITE_F0_SHIFT
        assert lo - 0.005 <= float(pitch[1:]) <= hi + 0.005  # as written, to two decimals
        assert SNR_RANGE[0] <= float(r["snr_db"]) <= SNR_RANGE[1]
    train_images = {(r["label"], r["drawing"]) for r in a if r["split"] == "train"}
    assert all((r["label"], r["drawing"]) in train_images for r in flite)
    assert speakers(b) == speakers(a)  # crossfitting never holds a synthetic voice out
    for r in flite[:3]:
        wave = decode_audio(both.parent / r["audio"], 8000)
        assert 0.5 < float(np.abs(wave).max()) <= 0.91


def test_audio_voices_study_scores_as_served() -> None:
    from benchmarks.avdigits.audio_voices import score_run
    from training.evaluate import Predictions

    rng = np.random.default_rng(0)

    def preds(n: int) -> Predictions:
        labels = rng.integers(0, 10, n)
        logits = {m: rng.normal(0, 1, (n, 10)) + s * np.eye(10)[labels] for m, s in (("audio", 1.5), ("video", 4.0))}
        return Predictions(logits, {m: np.ones(n, bool) for m in logits}, labels)

    val, test = preds(400), preds(300)
    out = score_run(val, test)
    for name, m in (("audio", "audio"), ("video", "video")):
        # calibration and maps never change a label: accuracy is the logits' own
        assert out[name]["accuracy"] == pytest.approx(float((test.logits[m].argmax(1) == test.labels).mean()))
    assert 0 < out["audio"]["accuracy"] < out["video"]["accuracy"]
    for sub in ("audio", "video", "audio+video"):
        fig = out[sub]
        assert fig["n"] == 300
        assert 0 <= fig["answered"] <= 1
        assert (fig["error_among_answered"] is None) == (fig["answered"] == 0)
        assert fig["ece_floor"] > 0
        assert fig["nll"] > 0
        assert 0 <= fig["ece"] <= 1


def test_audio_voices_study_skips_cleanly_without_shared_data(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "MLA_SHARED_DATA": str(tmp_path / "absent"), "MLA_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "benchmarks.avdigits.audio_voices", "--runs", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_audio_voices_table_gives_the_spread_only_where_there_are_seeds() -> None:
    from benchmarks.avdigits.audio_voices import ROWS, markdown

    def fig(acc: float, answered: float) -> dict[str, Any]:
        return {"n": 500, "accuracy": acc, "ece": 0.05, "ece_floor": 0.04, "nll": 1.0, "answered": answered,
                "error_among_answered": None if answered == 0 else 0.1}  # fmt: skip

    rows = {}
    for i, (name, (_, _, _, seeds)) in enumerate(ROWS.items()):
        std = 0.02 if len(seeds) > 1 else None
        mean = {"val_audio_accuracy": 0.6, "audio_accuracy_std": std, "audio": fig(0.5 + i / 10, i / 10)}
        mean |= {"video": fig(0.9, 0.9), "audio+video": fig(0.96, 1.0)}
        rows[name] = {"seeds": list(seeds), "mean": mean}
    lines = [line for line in markdown({"synthetic_per_digit": 150, "rows": rows}).splitlines() if line.startswith("| ")]
    body = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[1:]}
    assert list(body) == list(ROWS)
    for i, (name, (_, _, _, seeds)) in enumerate(ROWS.items()):
        cells = body[name]
        assert cells[1] == str(len(seeds))
        assert cells[3] == f"{0.5 + i / 10:.3f}" + (" ± 0.020" if len(seeds) > 1 else "")
        assert cells[4] == f"{i / 10:+.3f}"  # against the default recipe's row, measured in the same run
        assert cells[9] == ("none answered" if i == 0 else "0.100")
