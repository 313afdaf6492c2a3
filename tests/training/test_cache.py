"""Decoded inputs are cached by file content and preprocessing settings."""

from pathlib import Path

import numpy as np
import pytest

import training.data.cache as cache_mod
from common.media import AudioSpec, VideoSpec
from training.data.cache import DecodeCache, Spec
from training.data.specs import DataError, Sample
from training.data.writers import write_audio, write_video


def _sample(tmp_path: Path) -> Sample:
    write_audio(tmp_path / "a.wav", np.sin(np.arange(8000) / 5).astype(np.float32) * 0.3, 8000)
    write_video(tmp_path / "v.mp4", np.full((6, 16, 16, 3), 90, np.uint8), 6)
    return Sample({"audio": tmp_path / "a.wav", "video": tmp_path / "v.mp4"}, 0, "train", "test row")


def test_second_prepare_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = _sample(tmp_path)
    cache = DecodeCache(tmp_path / "cache")
    specs: dict[str, Spec] = {"audio": AudioSpec(16_000, 16_000), "video": VideoSpec(2, 8, 8)}
    calls: list[str] = []
    real = cache_mod.decode

    def counting(modality: str, path: Path, spec: object, limits: object, strict: bool = True) -> np.ndarray:
        calls.append(modality)
        return real(modality, path, spec, limits, strict)  # type: ignore[arg-type]

    monkeypatch.setattr(cache_mod, "decode", counting)
    first = cache.prepare([sample], specs)
    assert sorted(calls) == ["audio", "video"]
    audio = np.load(first[0]["audio"])  # type: ignore[arg-type]
    assert audio.shape == (16_000,)
    assert audio.dtype == np.float32
    second = cache.prepare([sample], specs)
    assert second == first
    assert len(calls) == 2
    # Other settings are another key; so is other content at the same path.
    cache.prepare([sample], {"video": VideoSpec(3, 8, 8)})
    assert len(calls) == 3
    write_video(tmp_path / "v.mp4", np.full((6, 16, 16, 3), 200, np.uint8), 6)
    third = cache.prepare([sample], specs)
    assert third[0]["video"] != first[0]["video"]
    assert third[0]["audio"] == first[0]["audio"]
    assert np.load(third[0]["video"]).mean() > 150  # type: ignore[arg-type]


def test_undecodable_file_names_file_and_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio at all")
    sample = Sample({"audio": bad}, 0, "train", "manifest.csv row 7")
    for workers in (1, 2):
        with pytest.raises(DataError, match=r"manifest.csv row 7: cannot use audio file .*bad.wav"):
            DecodeCache(tmp_path / f"c{workers}").prepare([sample], {"audio": AudioSpec(16_000, 16_000)}, workers=workers)
