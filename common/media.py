"""Decode audio and video with PyAV into the arrays the models take.

Training and the service share these functions, so a clip is decoded the same way in
both: audio becomes mono float32 at the model's sample rate, video becomes N uint8 RGB
frames sampled uniformly over the clip and resized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np

log = logging.getLogger(__name__)


class MediaError(Exception):
    """A file that cannot be turned into model input."""


class DecodeError(MediaError):
    """The container or stream is corrupt, truncated or not media at all."""


class MissingStreamError(MediaError):
    """The file decodes but has no stream of the kind asked for (no audio track, say)."""


class MediaLimitError(MediaError):
    """The file is longer, larger or has more frames than the configured limit."""


class UnsupportedFormatError(MediaError):
    """FFmpeg recognises the container, but it is not one that is accepted."""


class StillImageError(MediaError):
    """A still image where audio or video was expected."""


# FFmpeg demuxer names accepted by default: the usual audio and audio-visual containers.
MEDIA_FORMATS = frozenset(
    {
        "wav",
        "w64",
        "flac",
        "mp3",
        "ogg",
        "aac",
        "aiff",
        "mov,mp4,m4a,3gp,3g2,mj2",
        "matroska,webm",
        "flv",
        "mpeg",
        "mpegts",
        "avi",
        "asf",
    }
)
IMAGE_FORMATS = frozenset({"image2", "gif", "apng", "webp", "ico"})  # and every "*_pipe" demuxer


@dataclass(frozen=True)
class AudioSpec:
    """How a waveform is prepared: resampled to `sample_rate`, padded/cropped to `samples`."""

    sample_rate: int
    samples: int


@dataclass(frozen=True)
class VideoSpec:
    """How a clip is prepared: `frames` frames sampled uniformly, resized to height x width."""

    frames: int
    height: int
    width: int


@dataclass(frozen=True)
class Limits:
    """Bounds checked before and while decoding; None means unbounded."""

    max_seconds: float | None = None
    max_pixels: int | None = None
    max_frames: int | None = None
    min_frames: int = 1


NO_LIMITS = Limits()


def _open(path: str | Path, formats: frozenset[str] | None = None) -> av.container.InputContainer:
    """Open a container; with `formats`, refuse images and containers outside that set."""
    name = Path(path).name
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise DecodeError(f"cannot open {name}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"cannot open {name}: {exc}") from exc
    fmt = container.format.name
    if formats is not None and fmt not in formats:
        container.close()
        if fmt in IMAGE_FORMATS or fmt.endswith("_pipe"):
            raise StillImageError(f"{name} is a still image ({fmt}), not audio or video")
        raise UnsupportedFormatError(f"{name} is in the {fmt!r} format, which is not accepted")
    return container


def _check_declared_duration(name: str, container: av.container.InputContainer, stream: av.stream.Stream, limits: Limits) -> None:
    """Refuse by the duration the headers claim, before decoding anything (headers that say nothing pass)."""
    if limits.max_seconds is None:
        return
    if stream.duration is not None and stream.time_base is not None:
        declared: float | None = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        declared = container.duration / av.time_base
    else:
        declared = None
    if declared is not None and declared > limits.max_seconds:
        raise MediaLimitError(f"{name} lasts {declared:.1f} s, more than the limit of {limits.max_seconds:g} s")


def decode_audio(
    path: str | Path, sample_rate: int, limits: Limits = NO_LIMITS, formats: frozenset[str] | None = None
) -> np.ndarray:
    """Return the first audio track of `path` as mono float32 at `sample_rate`."""
    name = Path(path).name
    with _open(path, formats) as container:
        if not container.streams.audio:
            raise MissingStreamError(f"{name} has no audio track")
        stream = container.streams.audio[0]
        _check_declared_duration(name, container, stream, limits)
        max_samples = None if limits.max_seconds is None else int(limits.max_seconds * sample_rate) + sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                # Headers can lie about duration: enforce the limit on what is decoded too.
                if max_samples is not None and total > max_samples:
                    raise MediaLimitError(f"{name} is longer than the limit of {limits.max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{name}: corrupt audio ({exc.strerror or exc})") from exc
    if not chunks or sum(c.size for c in chunks) == 0:
        raise DecodeError(f"{name}: no audio samples could be decoded")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Crop to the first `samples` samples or pad the end with zeros."""
    if wave.shape[0] >= samples:
        return np.ascontiguousarray(wave[:samples])
    return np.pad(wave, (0, samples - wave.shape[0]))


def load_audio(
    path: str | Path, spec: AudioSpec, limits: Limits = NO_LIMITS, formats: frozenset[str] | None = None
) -> np.ndarray:
    """Decode and fit to the model's clip length: float32 [spec.samples]."""
    return fit_length(decode_audio(path, spec.sample_rate, limits, formats), spec.samples)


def uniform_indices(available: int, wanted: int) -> np.ndarray:
    """Indices of `wanted` frames spread evenly over `available` (centre of each segment)."""
    return ((np.arange(wanted) + 0.5) * available / wanted).astype(np.int64).clip(0, available - 1)


def load_video(
    path: str | Path, spec: VideoSpec, limits: Limits = NO_LIMITS, formats: frozenset[str] | None = None
) -> np.ndarray:
    """Decode the first video track: uint8 RGB frames [spec.frames, height, width, 3].

    Every frame is decoded (cheap) but only the sampled ones are converted and resized
    (the expensive part), as measured in PERF-NOTES.md.
    """
    name = Path(path).name
    with _open(path, formats) as container:
        if not container.streams.video:
            raise MissingStreamError(f"{name} has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise MediaLimitError(f"{name} is {width}x{height}, more than {limits.max_pixels} pixels per frame")
        _check_declared_duration(name, container, stream, limits)
        frames: list[av.VideoFrame] = []
        try:
            for frame in container.decode(stream):
                if limits.max_pixels is not None and frame.width * frame.height > limits.max_pixels:
                    raise MediaLimitError(f"{name} has a frame larger than {limits.max_pixels} pixels")
                frames.append(frame)
                if limits.max_frames is not None and len(frames) > limits.max_frames:
                    raise MediaLimitError(f"{name} has more than {limits.max_frames} frames")
        except av.error.FFmpegError as exc:
            if not frames:
                raise DecodeError(f"{name}: corrupt video ({exc.strerror or exc})") from exc
            # A truncated tail still leaves usable frames: keep what decoded.
            log.warning("%s: video stream ends early (%s); using %d frames", name, exc, len(frames))
        if len(frames) < max(1, limits.min_frames):
            raise DecodeError(f"{name}: {len(frames)} video frame(s) decoded, at least {max(1, limits.min_frames)} needed")
        picked = uniform_indices(len(frames), spec.frames)
        out = np.stack([frames[i].to_ndarray(format="rgb24", width=spec.width, height=spec.height) for i in picked])
    return out
