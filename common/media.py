"""Decode audio and video with PyAV into the arrays the models take, with bounded work for any file.

Training and the service share these functions, so a clip is decoded the same way in
both: audio becomes mono float32 at the model's sample rate, video becomes N uint8 RGB
frames sampled uniformly over the clip and resized.

Any file, hostile ones included, costs bounded memory and time: the container must be one
of the accepted demuxers (FFmpeg's own `format_whitelist`, so no other demuxer, such as
HLS, ever opens a file a playlist names), probing is capped, and the declared sample rate,
channel count, stream count, frame size and duration are checked before anything is
decoded. Audio stops decoding once the clip is full; video decodes only as far as the
sampled frames need, by seeking to the key frame before each (common/frames.py), and converts
only the frames it keeps, at the target size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import av
import av.error
import numpy as np
from av.audio.plane import AudioPlane
from av.video.codeccontext import VideoCodecContext

from common.frames import Converter, SampleStats, decoded_frames, index_packets, memory_error, scan, seek, uniform_indices
from common.media_types import (
    NO_LIMITS,
    AudioSpec,
    DecodeError,
    Limits,
    MediaError,
    MediaLimitError,
    MissingStreamError,
    StillImageError,
    UnsupportedFormatError,
    VideoSpec,
)

__all__ = [
    "IMAGE_FORMATS",
    "MEDIA_FORMATS",
    "NO_LIMITS",
    "AudioSpec",
    "DecodeError",
    "Limits",
    "MediaError",
    "MediaLimitError",
    "MissingStreamError",
    "StillImageError",
    "UnsupportedFormatError",
    "VideoSpec",
    "decode_audio",
    "fit_length",
    "load_audio",
    "load_video",
    "uniform_indices",
]

log = logging.getLogger(__name__)


# FFmpeg demuxer names accepted by default: the usual audio and audio-visual containers.
# (A demuxer with several names, "mov,mp4,m4a,3gp,3g2,mj2", matches when any of them is listed.)
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
# Probing reads at most this much of a file, and this much of its timeline (FFmpeg's defaults,
# stated here so that nothing raises them): enough to find every stream of a real file.
PROBE_BYTES = 5_000_000
PROBE_MICROSECONDS = 5_000_000
MAX_SAMPLES_PER_FRAME = 1 << 20  # one decoded audio frame; FFmpeg's own `max_samples` check


def _names(formats: frozenset[str]) -> list[str]:
    return sorted({n for f in formats for n in f.split(",")})


# A path, or a seekable binary file object (an upload kept in memory) whose `name` is the file's
# name: FFmpeg takes the extension of that name as a hint when it probes, as it does a path's.
Source = str | Path | IO[bytes]


def source_name(source: Source) -> str:
    """The file name that messages give for `source`."""
    if isinstance(source, str | Path):
        return Path(source).name
    return Path(str(getattr(source, "name", "") or "upload")).name


def _target(source: Source) -> str | IO[bytes]:
    if isinstance(source, str | Path):
        return str(source)
    source.seek(0)  # opened again (the video scan, the still-image probe): from its first byte
    return source


def _open_with(source: Source, formats: frozenset[str] | None, max_streams: int) -> av.container.InputContainer:
    options = {"probesize": str(PROBE_BYTES), "analyzeduration": str(PROBE_MICROSECONDS), "max_streams": str(max_streams)}
    if formats is not None:
        # Checked by FFmpeg before the demuxer reads its header: a playlist or concat list is
        # refused before its demuxer could open the files it names.
        options["format_whitelist"] = ",".join(_names(formats))
    return av.open(_target(source), mode="r", container_options=options)


def _open(source: Source, formats: frozenset[str] | None, limits: Limits) -> av.container.InputContainer:
    """Open a container; with `formats`, refuse images and containers outside that set."""
    name = source_name(source)
    try:
        container = _open_with(source, formats, limits.max_streams)
    except av.error.ArgumentError as exc:  # EINVAL: FFmpeg's "format not on whitelist"
        if formats is None:
            raise DecodeError(f"cannot open {name}: {exc.strerror or exc}") from exc
        raise _not_accepted(source, formats) from exc
    except av.error.FFmpegError as exc:
        raise DecodeError(f"cannot open {name}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"cannot open {name}: {exc}") from exc
    fmt = container.format.name
    if formats is not None and not set(fmt.split(",")) & set(_names(formats)):
        container.close()
        raise _not_accepted(source, formats)
    if len(container.streams) > limits.max_streams:
        container.close()
        raise MediaLimitError(f"{name} has {len(container.streams)} streams, more than {limits.max_streams}")
    return container


def _not_accepted(source: Source, formats: frozenset[str]) -> MediaError:
    """Say why a file outside the accepted formats was refused: a still image, or another container."""
    name = source_name(source)
    images = [f for f in av.formats_available if f in IMAGE_FORMATS or f.endswith("_pipe")]
    try:  # image demuxers open nothing but the file itself, so this probe is safe
        options = {"format_whitelist": ",".join(images), "probesize": str(PROBE_BYTES)}
        with av.open(_target(source), container_options=options) as c:
            return StillImageError(f"{name} is a still image ({c.format.name}), not audio or video")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OverflowError):
        pass
    return UnsupportedFormatError(f"{name} is not in an accepted container format ({', '.join(_names(formats))})")


def _no_decoder(name: str, kind: str) -> DecodeError:
    return DecodeError(f"{name}: its {kind} codec is unknown or has no decoder here")


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


def _check_audio_format(name: str, rate: int, channels: int, limits: Limits) -> None:
    if not limits.min_sample_rate <= rate <= limits.max_sample_rate:
        raise DecodeError(f"{name}: sample rate {rate} Hz is outside {limits.min_sample_rate}..{limits.max_sample_rate} Hz")
    if not 1 <= channels <= limits.max_channels:
        raise DecodeError(f"{name}: {channels} audio channels; 1..{limits.max_channels} are accepted")


# Sample format (packed name) -> numpy type and FFmpeg's scale of it to float: (x - offset) * scale.
_SAMPLE_TYPES: dict[str, tuple[type[np.generic], int, float]] = {
    "u8": (np.uint8, 128, 2.0**-7),
    "s16": (np.int16, 0, 2.0**-15),
    "s32": (np.int32, 0, 2.0**-31),
    "s64": (np.int64, 0, 2.0**-63),
    "flt": (np.float32, 0, 1.0),
    "dbl": (np.float64, 0, 1.0),
}


def _unnamed(layout: av.AudioLayout) -> bool:
    """Channels in no stated order (plain PCM WAV past stereo, WAVE_FORMAT_EXTENSIBLE with no mask):
    FFmpeg would guess a layout, dropping the channels it takes for LFE or for ones past the guess,
    and has no guess at all for 9, 11, 13, 15, 17-23 or 25+ channels."""
    return layout.nb_channels > 2 and all(c.name == "NONE" for c in layout.channels)


def _channel_mean(frame: av.AudioFrame) -> av.AudioFrame:
    """The mean of all channels as one float32 channel. Each channel is read in place (a few
    one-channel buffers on top of the frame, whatever the channel count), its planes by index:
    PyAV's `frame.planes` looks for an end marker that FFmpeg's plane list past 8 channels lacks."""
    dtype, offset, scale = _SAMPLE_TYPES[frame.format.packed.name]
    n, channels = frame.samples, frame.layout.nb_channels
    if frame.format.is_planar:
        planes = [np.frombuffer(memoryview(AudioPlane(frame, c)), dtype, n) for c in range(channels)]
    else:
        packed = np.frombuffer(memoryview(AudioPlane(frame, 0)), dtype, n * channels).reshape(n, channels)
        planes = [packed[:, c] for c in range(channels)]
    total = np.zeros(n, np.float64)
    for plane in planes:
        total += plane
    total /= channels
    total -= offset
    total *= scale
    out = av.AudioFrame.from_ndarray(total.astype(np.float32)[None, :], format="flt", layout="mono")
    out.sample_rate = frame.sample_rate  # no timestamps: samples are never moved by them here, and nothing reads them
    return out


def _resampled(name: str, frames: Iterator[av.AudioFrame], sample_rate: int, limits: Limits) -> Iterator[np.ndarray]:
    """Mono float32 chunks at `sample_rate`; a frame whose format, layout or rate differs from
    the last one's (real mp3 and ADTS streams do this) gets a new resampler, after the old is flushed.
    Unnamed channels are averaged here first (`_unnamed`); FFmpeg downmixes the rest."""
    resampler: av.AudioResampler | None = None
    setup: tuple[str, str, int] | None = None
    for frame in frames:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if resampler is None or key != setup:
            _check_audio_format(name, frame.sample_rate, len(frame.layout.channels), limits)
            if resampler is not None:
                for out in resampler.resample(None):
                    yield out.to_ndarray().reshape(-1)
            resampler, setup = av.AudioResampler(format="flt", layout="mono", rate=sample_rate), key
        for out in resampler.resample(_channel_mean(frame) if _unnamed(frame.layout) else frame):
            yield out.to_ndarray().reshape(-1)
    if resampler is not None:
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1)


def decode_audio(
    path: Source,
    sample_rate: int,
    limits: Limits = NO_LIMITS,
    formats: frozenset[str] | None = None,
    keep: int | None = None,
) -> np.ndarray:
    """Return the first audio track of `path` as mono float32 at `sample_rate`.

    With `keep`, decoding stops once that many samples are out: the same samples as
    decoding the whole track and cropping (the resampler only emits a sample once it has
    all the input it depends on).
    """
    name = source_name(path)
    with _open(path, formats, limits) as container:
        if not container.streams.audio:
            raise MissingStreamError(f"{name} has no audio track")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx is None:
            raise _no_decoder(name, stream.type)
        _check_audio_format(name, ctx.sample_rate, ctx.channels, limits)
        _check_declared_duration(name, container, stream, limits)
        ctx.options = {"max_samples": str(MAX_SAMPLES_PER_FRAME)}
        max_samples = None if limits.max_seconds is None else int(limits.max_seconds * sample_rate) + sample_rate
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for chunk in _resampled(name, container.decode(stream), sample_rate, limits):
                if not np.isfinite(chunk).all():
                    raise DecodeError(f"{name}: the audio holds NaN or infinite samples")
                chunks.append(chunk)
                total += chunk.size
                if keep is not None and total >= keep:
                    break
                # Headers can lie about duration: enforce the limit on what is decoded too.
                if max_samples is not None and total > max_samples:
                    raise MediaLimitError(f"{name} is longer than the limit of {limits.max_seconds:g} s")
        except MemoryError as exc:  # av.error.MemoryError too: FFmpeg's ENOMEM under the worker's ceiling
            raise memory_error(name) from exc
        except av.error.FFmpegError as exc:
            if total == 0:
                raise DecodeError(f"{name}: corrupt audio ({exc.strerror or exc})") from exc
            # A truncated or damaged tail still leaves usable audio: keep what decoded.
            log.warning("%s: audio stream ends early (%s); using %d samples", name, exc, total)
        except ValueError as exc:  # PyAV's refusal of a frame it cannot convert
            raise DecodeError(f"{name}: corrupt audio ({exc})") from exc
    if total == 0:
        raise DecodeError(f"{name}: no audio samples could be decoded")
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    return wave if keep is None else wave[:keep]


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Crop to the first `samples` samples or pad the end with zeros."""
    if wave.shape[0] >= samples:
        return np.ascontiguousarray(wave[:samples])
    return np.pad(wave, (0, samples - wave.shape[0]))


def load_audio(path: Source, spec: AudioSpec, limits: Limits = NO_LIMITS, formats: frozenset[str] | None = None) -> np.ndarray:
    """Decode and fit to the model's clip length: float32 [spec.samples]."""
    return fit_length(decode_audio(path, spec.sample_rate, limits, formats, keep=spec.samples), spec.samples)


def load_video(
    path: Source,
    spec: VideoSpec,
    limits: Limits = NO_LIMITS,
    formats: frozenset[str] | None = None,
    threads: int = 0,
    method: str = "seek",
    stats: SampleStats | None = None,
) -> np.ndarray:
    """Decode the first video track: uint8 RGB frames [spec.frames, height, width, 3].

    One demuxing pass indexes the packets (no decoding), then only the sampled frames are
    decoded and converted, at the target size (common/frames.py). `method`: "seek" (start at
    the key frame before each sampled frame, falling back to the scan where the stream's
    timestamps cannot place them) or "scan" (decode from the start). `threads`: FFmpeg
    decoding threads, 0 for its choice (one per core).
    """
    if method not in ("seek", "scan"):
        raise ValueError(f"method must be 'seek' or 'scan', not {method!r}")
    name = source_name(path)
    convert = Converter(spec)
    needed = max(1, limits.min_frames)
    with _open(path, formats, limits) as container:
        if not container.streams.video:
            raise MissingStreamError(f"{name} has no video track")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:
            raise _no_decoder(name, stream.type)
        width, height = ctx.width, ctx.height
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise MediaLimitError(f"{name} is {width}x{height}, more than {limits.max_pixels} pixels per frame")
        _check_declared_duration(name, container, stream, limits)
        index = index_packets(name, container, stream, limits)
        if index.count < needed:
            raise DecodeError(f"{name}: {index.count} video frame(s) decoded, at least {needed} needed")
        picks = uniform_indices(index.count, spec.frames)
        _setup_decoder(ctx, threads, limits)
        stats = stats if stats is not None else SampleStats()
        frames = seek(name, ctx, index, picks, convert, limits, stats) if method == "seek" else None
        if frames is not None:
            return np.stack(frames)
        if index.packets is not None and not stats.touched:  # a fresh decoder and every packet at hand
            frames, decoded = scan(name, decoded_frames(ctx, index.packets), picks, convert, limits, stats)
            return _checked(name, frames, decoded, needed)
    # Scan from a fresh decoder, demuxing again: the index held too much, or seeking gave up midway.
    with _open(path, formats, limits) as container:
        stream = container.streams.video[0]
        _setup_decoder(stream.codec_context, threads, limits)
        frames, decoded = scan(name, container.decode(stream), picks, convert, limits, stats)
    return _checked(name, frames, decoded, needed)


def _setup_decoder(ctx: VideoCodecContext, threads: int, limits: Limits) -> None:
    ctx.thread_type, ctx.thread_count = "AUTO", threads
    if limits.max_pixels is not None:
        ctx.options = {"max_pixels": str(limits.max_pixels)}  # FFmpeg's own check, on every frame it allocates


def _checked(name: str, frames: list[np.ndarray], decoded: int, needed: int) -> np.ndarray:
    if decoded < needed:
        raise DecodeError(f"{name}: {decoded} video frame(s) decoded, at least {needed} needed")
    return np.stack(frames)
