"""The AV-digits builder on a small slice of the real shared data."""

import csv
from pathlib import Path

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
    images = [r["image"] for r in rows]
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
    assert [(r["label"], r["split"], r["speaker"], r["image"]) for r in a] == [
        (r["label"], r["split"], r["speaker"], r["image"]) for r in b
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
