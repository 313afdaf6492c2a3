"""Decode audio and video with PyAV into the arrays the models take, with bounded work for any file.

Training and the service share these functions, so a clip is decoded the same way in
both: audio becomes mono float32 at the model's sample rate, video becomes N uint8 RGB
frames sampled uniformly over the clip and resized.

Any file, hostile ones included, costs bounded memory and time: the container must be one
of the accepted demuxers (FFmpeg's own `format_whitelist`, so no other demuxer, such as
HLS, ever opens a file a playlist names), probing is capped, and the declared sample rate,
channel count, stream count, frame size and duration are checked before anything is
decoded. Audio stops decoding once the clip is full; video keeps only the sampled frames,
each converted at the target size as it is decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np

log = logging.getLogger(__name__)


class MediaError(Exception):
    """A file that cannot be turned into model input."""


class DecodeError(MediaError):
    """The container or stream is corrupt, truncated, not media at all, or has no decoder here."""


class MissingStreamError(MediaError):
    """The file decodes but has no stream of the kind asked for (no audio track, say)."""


class MediaLimitError(MediaError):
    """The file is longer, larger, has more frames or needs more memory than the configured limit."""


class UnsupportedFormatError(MediaError):
    """The container is not one that is accepted."""


class StillImageError(MediaError):
    """A still image where audio or video was expected."""


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
    """Bounds checked before and while decoding.

    The first four are the caller's (None: unbounded); the sanity bounds below them hold for
    every file, in training too: no real recording has a rate, channel or stream count past them.
    """

    max_seconds: float | None = None
    max_pixels: int | None = None
    max_frames: int | None = None
    min_frames: int = 1
    min_sample_rate: int = 1_000
    max_sample_rate: int = 384_000
    max_channels: int = 32
    max_streams: int = 32


NO_LIMITS = Limits()


def _names(formats: frozenset[str]) -> list[str]:
    return sorted({n for f in formats for n in f.split(",")})


def _open_with(path: Path, formats: frozenset[str] | None, max_streams: int) -> av.container.InputContainer:
    options = {"probesize": str(PROBE_BYTES), "analyzeduration": str(PROBE_MICROSECONDS), "max_streams": str(max_streams)}
    if formats is not None:
        # Checked by FFmpeg before the demuxer reads its header: a playlist or concat list is
        # refused before its demuxer could open the files it names.
        options["format_whitelist"] = ",".join(_names(formats))
    return av.open(str(path), mode="r", container_options=options)


def _open(path: str | Path, formats: frozenset[str] | None, limits: Limits) -> av.container.InputContainer:
    """Open a container; with `formats`, refuse images and containers outside that set."""
    path = Path(path)
    name = path.name
    try:
        container = _open_with(path, formats, limits.max_streams)
    except av.error.ArgumentError as exc:  # EINVAL: FFmpeg's "format not on whitelist"
        if formats is None:
            raise DecodeError(f"cannot open {name}: {exc.strerror or exc}") from exc
        raise _not_accepted(path, formats) from exc
    except av.error.FFmpegError as exc:
        raise DecodeError(f"cannot open {name}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"cannot open {name}: {exc}") from exc
    fmt = container.format.name
    if formats is not None and not set(fmt.split(",")) & set(_names(formats)):
        container.close()
        raise _not_accepted(path, formats)
    if len(container.streams) > limits.max_streams:
        container.close()
        raise MediaLimitError(f"{name} has {len(container.streams)} streams, more than {limits.max_streams}")
    return container


def _not_accepted(path: Path, formats: frozenset[str]) -> MediaError:
    """Say why a file outside the accepted formats was refused: a still image, or another container."""
    images = [f for f in av.formats_available if f in IMAGE_FORMATS or f.endswith("_pipe")]
    try:  # image demuxers open nothing but the file itself, so this probe is safe
        with av.open(str(path), container_options={"format_whitelist": ",".join(images), "probesize": str(PROBE_BYTES)}) as c:
            return StillImageError(f"{path.name} is a still image ({c.format.name}), not audio or video")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OverflowError):
        pass
    return UnsupportedFormatError(f"{path.name} is not in an accepted container format ({', '.join(_names(formats))})")


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


def _memory_error(name: str) -> MediaLimitError:
    return MediaLimitError(f"{name} needs more memory to decode than the limit allows")


def _resampled(name: str, frames: Iterator[av.AudioFrame], sample_rate: int, limits: Limits) -> Iterator[np.ndarray]:
    """Mono float32 chunks at `sample_rate`; a frame whose format, layout or rate differs from
    the last one's (real mp3 and ADTS streams do this) gets a new resampler, after the old is flushed."""
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
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1)
    if resampler is not None:
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1)


def decode_audio(
    path: str | Path,
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
    name = Path(path).name
    with _open(path, formats, limits) as container:
        if not container.streams.audio:
            raise MissingStreamError(f"{name} has no audio track")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx is None:
            raise _no_decoder(name, "audio")
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
            raise _memory_error(name) from exc
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


def load_audio(
    path: str | Path, spec: AudioSpec, limits: Limits = NO_LIMITS, formats: frozenset[str] | None = None
) -> np.ndarray:
    """Decode and fit to the model's clip length: float32 [spec.samples]."""
    return fit_length(decode_audio(path, spec.sample_rate, limits, formats, keep=spec.samples), spec.samples)


def uniform_indices(available: int, wanted: int) -> np.ndarray:
    """Indices of `wanted` frames spread evenly over `available` (centre of each segment)."""
    return ((np.arange(wanted) + 0.5) * available / wanted).astype(np.int64).clip(0, available - 1)


def _count_frames(name: str, container: av.container.InputContainer, stream: av.stream.Stream, limits: Limits) -> int:
    """Frames in the stream, by demuxing without decoding (cheap): a demuxed video packet holds
    one frame. Refuses a clip over `max_frames` before a single frame is decoded."""
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size and not packet.is_discard:
                count += 1
                if limits.max_frames is not None and count > limits.max_frames:
                    raise MediaLimitError(f"{name} has more than {limits.max_frames} frames")
    except av.error.FFmpegError as exc:
        if count == 0:
            raise DecodeError(f"{name}: corrupt video ({exc.strerror or exc})") from exc
        log.warning("%s: video stream ends early (%s); counting %d frames", name, exc, count)
    return count


def _sampled_frames(
    name: str, frames: Iterator[av.VideoFrame], picks: np.ndarray, spec: VideoSpec, limits: Limits
) -> tuple[list[np.ndarray], int]:
    """Convert the frames at `picks` (sorted, repeats allowed) as they are decoded; keep nothing else.

    Returns the converted frames and how many frames decoded. Decoding stops after the last
    pick. (Seeking to the key frame before each pick would replace this loop, not its callers.)
    """
    out: list[np.ndarray] = []
    last: av.VideoFrame | None = None
    decoded = 0
    try:
        for frame in frames:
            if limits.max_pixels is not None and frame.width * frame.height > limits.max_pixels:
                raise MediaLimitError(f"{name} has a frame larger than {limits.max_pixels} pixels")
            while len(out) < len(picks) and picks[len(out)] == decoded:
                out.append(frame.to_ndarray(format="rgb24", width=spec.width, height=spec.height))
            last, decoded = frame, decoded + 1
            if len(out) == len(picks):
                break
    except MemoryError as exc:
        raise _memory_error(name) from exc
    except av.error.ArgumentError as exc:
        if limits.max_pixels is None:
            raise DecodeError(f"{name}: corrupt video ({exc.strerror or exc})") from exc
        # EINVAL from FFmpeg's own max_pixels check: a frame larger than the header said
        raise MediaLimitError(f"{name} has a frame larger than {limits.max_pixels} pixels") from exc
    except av.error.FFmpegError as exc:
        if last is None:
            raise DecodeError(f"{name}: corrupt video ({exc.strerror or exc})") from exc
        # A damaged tail still leaves usable frames: the picks past it take the last good frame.
        log.warning("%s: video stream ends early (%s) after %d frames", name, exc, decoded)
    except ValueError as exc:
        raise DecodeError(f"{name}: corrupt video ({exc})") from exc
    if last is not None and len(out) < len(picks):
        tail = last.to_ndarray(format="rgb24", width=spec.width, height=spec.height)
        out.extend(tail for _ in range(len(picks) - len(out)))
    return out, decoded


def load_video(
    path: str | Path,
    spec: VideoSpec,
    limits: Limits = NO_LIMITS,
    formats: frozenset[str] | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Decode the first video track: uint8 RGB frames [spec.frames, height, width, 3].

    One demuxing pass counts the frames (no decoding), then a decoding pass converts only
    the sampled ones, at the target size, as they come (conversion costs more than decoding:
    PERF-NOTES.md). `threads`: FFmpeg decoding threads, 0 for its choice (one per core).
    """
    name = Path(path).name
    with _open(path, formats, limits) as container:
        if not container.streams.video:
            raise MissingStreamError(f"{name} has no video track")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise _no_decoder(name, "video")
        width, height = stream.codec_context.width, stream.codec_context.height
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise MediaLimitError(f"{name} is {width}x{height}, more than {limits.max_pixels} pixels per frame")
        _check_declared_duration(name, container, stream, limits)
        available = _count_frames(name, container, stream, limits)
    needed = max(1, limits.min_frames)
    if available < needed:
        raise DecodeError(f"{name}: {available} video frame(s) decoded, at least {needed} needed")
    picks = uniform_indices(available, spec.frames)
    with _open(path, formats, limits) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_type, ctx.thread_count = "AUTO", threads
        if limits.max_pixels is not None:
            ctx.options = {"max_pixels": str(limits.max_pixels)}  # FFmpeg's own check, on every frame it allocates
        frames, decoded = _sampled_frames(name, container.decode(stream), picks, spec, limits)
    if decoded < needed:
        raise DecodeError(f"{name}: {decoded} video frame(s) decoded, at least {needed} needed")
    return np.stack(frames)
