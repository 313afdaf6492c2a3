"""A cached data set is built once, and an interrupted build leaves nothing that looks finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.files import built_once


def test_a_data_set_is_built_once_and_an_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "list.csv").write_text("path\n")

    listing = built_once(tmp_path / "set", "list.csv", build, "a set")
    assert listing == tmp_path / "set" / "list.csv"
    assert listing.read_text() == "path\n"
    assert built_once(tmp_path / "set", "list.csv", build, "a set") == listing
    assert len(calls) == 1  # found, not built again
    assert calls[0] != tmp_path / "set"  # built elsewhere, moved into place

    def killed(folder: Path) -> None:
        (folder / "half.wav").write_bytes(b"RIFF")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        built_once(tmp_path / "other", "list.csv", killed, "a set")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no folder, no half-built files
