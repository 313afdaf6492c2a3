"""The fuzz harness in its short form (CI): mutated real media, hostile files, broken multipart and
schemathesis against a live server; no answer >= 500 but 503, nothing left behind, RSS under its bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fuzz import run


@pytest.mark.slow
def test_short_fuzz_finds_no_server_error(tiny_repo: Path, tmp_path: Path) -> None:
    report = run(
        tiny_repo, requests=1500, seconds=75, concurrency=8, seed=1, schema_examples=15, out=tmp_path, still_requests=500
    )
    assert report["problems"] == [], report
    assert report["requests"] >= 500
    assert report["statuses"].get("200", 0) > 0  # the clean controls and many mutations still decode
    assert {"400", "413", "415", "422"} <= set(report["statuses"])  # each kind of refusal was exercised
    still = report["image_text"]  # the image + text model, under hostile images and texts
    assert still["requests"] >= 200
    assert still["statuses"].get("200", 0) > 0
    assert {"400", "413", "415"} <= set(still["statuses"])
