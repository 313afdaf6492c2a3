"""Decoding real media, generated here by real encoders, and refusing what is not media."""

import struct
import wave
from pathlib import Path

import av
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


def channel_tones(channels: int, t: np.ndarray) -> np.ndarray:
    """[channels, len(t)]: channel k a sine of its own frequency and phase, so a dropped or misweighted one shows."""
    k = np.arange(channels)[:, None]
    return 0.5 * np.sin(2 * np.pi * (100 + 50 * k) * t + k)


def pcm16(signal: np.ndarray) -> bytes:
    """[channels, n] floats to interleaved 16-bit little-endian PCM."""
    return np.clip(np.round(signal.T * 32768), -32768, 32767).astype("<i2").tobytes()


def write_wav(path: Path, signal: np.ndarray, rate: int) -> None:
    """Plain PCM WAV (WAVE_FORMAT_PCM) by the stdlib: no channel order stated, whatever the count."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(signal.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16(signal))


def write_extensible_wav(path: Path, signal: np.ndarray, rate: int) -> None:
    """WAVE_FORMAT_EXTENSIBLE, 16-bit PCM, with a channel mask of 0: channels named nowhere."""
    channels, data = signal.shape[0], pcm16(signal)
    pcm_guid = struct.pack("<IHH8s", 1, 0, 0x10, bytes.fromhex("800000aa00389b71"))
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * channels * 2, channels * 2, 16, 22, 16, 0) + pcm_guid
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def assert_channel_mean(wave_out: np.ndarray, channels: int, weight: float) -> None:
    """The decoded mono is `weight` times the sum of the channels at SR. Tolerance 1e-4: the
    16-bit quantisation moves each channel, so their mean, by at most 0.5/32768 (1.5e-5), the
    resampler's passband ripple at these frequencies (<= 1.6 kHz, FFmpeg's default filter)
    adds about 1e-5; a channel dropped or misweighted moves it by 0.5/32 (1.6e-2) or more.
    The first and last 32 samples are left out: the resampler's filter (16 input samples each
    side, 32 at twice the rate) reaches past the ends of the clip there."""
    expected = weight * channel_tones(channels, np.arange(wave_out.size) / SR).sum(axis=0)
    np.testing.assert_allclose(wave_out[32:-32], expected[32:-32], rtol=0, atol=1e-4)


@pytest.mark.parametrize("channels", range(1, 33))
def test_every_channel_count_decodes_to_the_channel_mean(tmp_path: Path, channels: int) -> None:
    rate = SR // 2  # resampled on the way, as most files are
    signal = channel_tones(channels, np.arange(rate // 4) / rate)
    # FFmpeg's own downmix, kept for mono and stereo: stereo is (L + R) / sqrt(2), not the mean.
    weight = 1 / np.sqrt(2) if channels == 2 else 1 / channels
    for write in (write_wav, write_extensible_wav):
        path = tmp_path / f"{write.__name__}_{channels}.wav"
        write(path, signal, rate)
        wave_out = decode_audio(path, SR, Limits(max_channels=32))
        assert wave_out.dtype == np.float32
        assert wave_out.shape == (SR // 4,)
        assert_channel_mean(wave_out, channels, weight)


def test_planar_audio_past_eight_channels_decodes_to_the_channel_mean(tmp_path: Path) -> None:
    """WavPack decodes to one plane per channel, which PyAV's `frame.planes` cannot list past 8."""
    channels, path = 20, tmp_path / "planar.mkv"
    # Multiples of 256: FFmpeg's WavPack encoder keeps only the top 8 bits of these samples.
    ints = np.round(channel_tones(channels, np.arange(SR // 4) / SR) * 128).astype(np.int16) * 256
    with av.open(str(path), "w") as out:
        stream = out.add_stream("wavpack", rate=SR, layout=f"{channels} channels")
        frame = av.AudioFrame.from_ndarray(ints.T.reshape(1, -1), format="s16", layout=f"{channels} channels")
        frame.sample_rate = SR
        to_planar = av.AudioResampler(format="s16p", rate=SR)
        for chunk in [*to_planar.resample(frame), *to_planar.resample(None)]:
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert next(container.decode(audio=0)).format.name == "s16p"
    wave_out = decode_audio(path, SR)
    np.testing.assert_allclose(wave_out, ints.mean(axis=0) / 32768, rtol=0, atol=1e-6)  # no resampling: float32 rounding


def test_more_channels_than_the_limit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.wav"
    write_wav(path, channel_tones(33, np.arange(SR // 10) / SR), SR)
    with pytest.raises(DecodeError, match=r"33 audio channels; 1\.\.32 are accepted"):
        decode_audio(path, SR, Limits(max_channels=32))


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
