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
