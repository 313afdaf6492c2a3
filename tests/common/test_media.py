"""Decoding real media, generated here by real encoders, and refusing what is not media."""

from pathlib import Path

import numpy as np
import pytest

from common.media import (
    AudioSpec,
    DecodeError,
    Limits,
    MediaLimitError,
    MissingStreamError,
    VideoSpec,
    decode_audio,
    fit_length,
    load_audio,
    load_video,
    uniform_indices,
)
from tests.conftest import shared_data
from training.data.writers import write_audio, write_video

SR = 16_000


def tone(freq: float = 440.0, seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def ramp_frames(n: int = 12, size: int = 32) -> np.ndarray:
    """Frame i is uniformly grey at level 20 * i, so the sampled frames can be identified."""
    return np.stack([np.full((size, size, 3), 20 * i, np.uint8) for i in range(n)])


@pytest.mark.parametrize(("codec", "suffix"), [("pcm_s16le", "wav"), ("flac", "flac"), ("libmp3lame", "mp3")])
def test_audio_containers_decode_and_resample(tmp_path: Path, codec: str, suffix: str) -> None:
    path = tmp_path / f"tone.{suffix}"
    write_audio(path, tone(sr=8000), 8000, codec=codec)
    wave = decode_audio(path, SR)
    assert wave.dtype == np.float32
    assert abs(wave.shape[0] - SR // 2) < 0.06 * SR  # mp3 adds encoder delay/padding
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * SR / wave.shape[0] == pytest.approx(440, abs=8)


def test_fit_length_pads_and_crops() -> None:
    assert fit_length(np.ones(3, np.float32), 5).tolist() == [1, 1, 1, 0, 0]
    assert fit_length(np.arange(8, dtype=np.float32), 4).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("codec", "suffix"), [("libx264", "mp4"), ("mpeg4", "mkv"), ("flv", "flv")])
def test_video_containers_sample_uniform_frames(tmp_path: Path, codec: str, suffix: str) -> None:
    path = tmp_path / f"ramp.{suffix}"
    write_video(path, ramp_frames(), fps=12, codec=codec)
    frames = load_video(path, VideoSpec(frames=3, height=16, width=24))
    assert frames.shape == (3, 16, 24, 3)
    assert frames.dtype == np.uint8
    # 12 frames, 3 wanted: the centres of each third are frames 2, 6 and 10.
    np.testing.assert_allclose(frames.reshape(3, -1).mean(axis=1), [40, 120, 200], atol=6)


def test_uniform_indices_cover_the_clip() -> None:
    assert uniform_indices(12, 3).tolist() == [2, 6, 10]
    assert uniform_indices(2, 4).tolist() == [0, 0, 1, 1]


def test_video_with_audio_track_gives_both(tmp_path: Path) -> None:
    path = tmp_path / "av.mp4"
    write_video(path, ramp_frames(), fps=12, audio=tone(seconds=1.0), sample_rate=SR)
    assert load_video(path, VideoSpec(2, 8, 8)).shape == (2, 8, 8, 3)
    assert load_audio(path, AudioSpec(SR, SR)).shape == (SR,)


def test_random_bytes_and_text_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path in (junk, text, empty):
        with pytest.raises(DecodeError):
            load_audio(path, AudioSpec(SR, SR))
        with pytest.raises((DecodeError, MissingStreamError)):
            load_video(path, VideoSpec(2, 8, 8))


def test_missing_stream_is_named(tmp_path: Path) -> None:
    silent = tmp_path / "silent.mp4"
    write_video(silent, ramp_frames(), fps=12)
    with pytest.raises(MissingStreamError, match="no audio track"):
        load_audio(silent, AudioSpec(SR, SR))
    wav = tmp_path / "a.wav"
    write_audio(wav, tone(), SR)
    with pytest.raises(MissingStreamError, match="no video track"):
        load_video(wav, VideoSpec(2, 8, 8))


def test_limits_refuse_long_and_large_media(tmp_path: Path) -> None:
    wav = tmp_path / "long.wav"
    write_audio(wav, tone(seconds=3.0), SR)
    with pytest.raises(MediaLimitError, match="limit"):
        decode_audio(wav, SR, Limits(max_seconds=1.0))
    video = tmp_path / "v.mp4"
    write_video(video, ramp_frames(size=64), fps=12)
    with pytest.raises(MediaLimitError, match="pixels"):
        load_video(video, VideoSpec(2, 8, 8), Limits(max_pixels=32 * 32))
    with pytest.raises(MediaLimitError, match="frames"):
        load_video(video, VideoSpec(2, 8, 8), Limits(max_frames=5))
    with pytest.raises(DecodeError, match="at least 20"):
        load_video(video, VideoSpec(2, 8, 8), Limits(min_frames=20))


def test_grid_clip_decodes_both_tracks() -> None:
    clip = next(iter(sorted(shared_data("grid").glob("*.mpg"))))
    frames = load_video(clip, VideoSpec(3, 224, 224))
    assert frames.shape == (3, 224, 224, 3)
    assert frames.std() > 10
    wave = decode_audio(clip, SR)
    assert 2.5 * SR < wave.shape[0] < 3.5 * SR
    assert np.abs(wave).max() > 0.01
