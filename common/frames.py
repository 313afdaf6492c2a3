"""Which video frames a clip gives the model, and decoding only those.

One demuxing pass (no decoding) indexes the stream: each packet's presentation timestamp,
whether it is a key frame, and, up to a byte budget, the packet itself. The wanted frames are
the centres of N equal segments of the clip, by presentation order. Then one of two paths
decodes them:

- **seek** (the default): for each wanted frame, start decoding at the last key frame at or
  before its timestamp and decode forward only until it comes out, skipping the frames on the
  way that no other frame refers to (most B-frames); a wanted frame in the GOP already being
  decoded continues from there. The packets come from the index, not from a
  container seek, so a container without an index (MPEG-TS, MPEG-PS, a Matroska file without
  cues) seeks as well as an MP4, and a seek can never land anywhere but on the key frame chosen.
  Cost: demuxing the whole file (cheap) plus at most one GOP per wanted frame.
- **scan**: decode from the first packet, count decoded frames, stop after the last wanted one.
  Used where the timestamps cannot place the frames (missing or repeated timestamps, key frames
  out of order), where the index holds more than its budget, and whenever the seek path meets
  anything it does not expect (a decoding error, a wanted timestamp that never comes out): it
  then gives up and the scan decides, with its own handling of damaged streams.

Both convert only the frames kept, each from the decoder's YUV straight to RGB at the model's
size in one swscale call (no full-size RGB frame), with one reused context on one thread (the
decode workers already use one core each; PyAV's default is a new context, and a thread pool,
per frame). Scaling in YUV 4:2:0 first and converting the small frame after was a third
cheaper per 1080p frame, but changes every array by a few levels (chroma at half the model's
resolution), which would invalidate the training caches and the models trained on them, for
about a millisecond per clip: not done.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import av
import av.error
import numpy as np
from av.video.codeccontext import VideoCodecContext
from av.video.reformatter import VideoReformatter

from common.media_types import DecodeError, Limits, MediaLimitError, VideoSpec

log = logging.getLogger(__name__)
# The index keeps packets up to this many bytes (every upload fits: the service takes at most
# 50 MB by default); past it, decoding demuxes the file again and scans.
HOLD_BYTES = 256 * 2**20


def uniform_indices(available: int, wanted: int) -> np.ndarray:
    """Indices of `wanted` frames spread evenly over `available` (centre of each segment)."""
    return ((np.arange(wanted) + 0.5) * available / wanted).astype(np.int64).clip(0, available - 1)


def memory_error(name: str) -> MediaLimitError:
    return MediaLimitError(f"{name} needs more memory to decode than the limit allows")


@dataclass
class FrameIndex:
    """A video stream's packets in decode order, from one demuxing pass."""

    count: int = 0  # frames (one per demuxed video packet)
    pts: list[int | None] = field(default_factory=list)
    keyframe: list[bool] = field(default_factory=list)
    packets: list[av.Packet] | None = field(default_factory=list)  # None: over HOLD_BYTES, dropped
    held_bytes: int = 0

    def presentation(self) -> list[int] | None:
        """Every timestamp in presentation order, or None when they cannot place the frames."""
        if any(p is None for p in self.pts):
            return None
        order = sorted(p for p in self.pts if p is not None)
        if any(a == b for a, b in itertools.pairwise(order)):
            return None
        return order

    def starts(self) -> tuple[list[int], list[int]] | None:
        """Key frames as (their timestamps, their decode-order positions); None if not increasing."""
        keys = [(p, i) for i, (p, k) in enumerate(zip(self.pts, self.keyframe, strict=True)) if k and p is not None]
        if not keys:
            return None
        stamps = [p for p, _ in keys]
        if any(b <= a for a, b in itertools.pairwise(stamps)):
            return None
        return stamps, [i for _, i in keys]


def index_packets(name: str, container: av.container.InputContainer, stream: av.stream.Stream, limits: Limits) -> FrameIndex:
    """Demux `stream` without decoding: a demuxed video packet holds one frame. Refuses a clip
    over `max_frames` before a single frame is decoded."""
    index = FrameIndex()
    try:
        for packet in container.demux(stream):
            if not packet.size or packet.is_discard:
                continue
            index.count += 1
            if limits.max_frames is not None and index.count > limits.max_frames:
                raise MediaLimitError(f"{name} has more than {limits.max_frames} frames")
            index.pts.append(packet.pts)
            index.keyframe.append(bool(packet.is_keyframe))
            if index.packets is not None:
                index.held_bytes += packet.size
                if index.held_bytes > HOLD_BYTES:
                    index.packets = None  # too large to hold: a second demuxing pass will scan
                else:
                    index.packets.append(packet)
    except MemoryError as exc:
        raise memory_error(name) from exc
    except av.error.FFmpegError as exc:
        if index.count == 0:
            raise DecodeError(f"{name}: corrupt video ({exc.strerror or exc})") from exc
        log.warning("%s: video stream ends early (%s); counting %d frames", name, exc, index.count)
    return index


class Converter:
    """Frames to uint8 RGB at the model's size: one reused swscale context, one thread."""

    def __init__(self, spec: VideoSpec) -> None:
        self.spec = spec
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        out = self.reformatter.reformat(frame, self.spec.width, self.spec.height, "rgb24", threads=1)
        return np.asarray(out.to_ndarray())


def _check_pixels(name: str, frame: av.VideoFrame, limits: Limits) -> None:
    if limits.max_pixels is not None and frame.width * frame.height > limits.max_pixels:
        raise MediaLimitError(f"{name} has a frame larger than {limits.max_pixels} pixels")


def decoded_frames(ctx: VideoCodecContext, packets: Iterable[av.Packet]) -> Iterator[av.VideoFrame]:
    """Decode `packets` in order, then drain the decoder (frames it held back for reordering)."""
    for packet in packets:
        yield from ctx.decode(packet)
    yield from ctx.decode(None)


def scan(
    name: str,
    frames: Iterator[av.VideoFrame],
    picks: np.ndarray,
    convert: Converter,
    limits: Limits,
    stats: SampleStats | None = None,
) -> tuple[list[np.ndarray], int]:
    """Convert the frames at `picks` (sorted decoded-frame counts, repeats allowed) as they are
    decoded; keep nothing else. Returns the converted frames and how many frames decoded;
    decoding stops after the last pick."""
    stats = stats if stats is not None else SampleStats()
    stats.method, stats.timestamps = "scan", []
    out: list[np.ndarray] = []
    last: av.VideoFrame | None = None
    decoded = 0
    try:
        for frame in frames:
            _check_pixels(name, frame, limits)
            while len(out) < len(picks) and picks[len(out)] == decoded:
                out.append(out[-1] if out and picks[len(out) - 1] == decoded else convert(frame))
                stats.timestamps.append(frame.pts)
            last, decoded = frame, decoded + 1
            if len(out) == len(picks):
                break
    except MemoryError as exc:
        raise memory_error(name) from exc
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
        tail = convert(last)
        stats.timestamps += [last.pts] * (len(picks) - len(out))
        out.extend(tail for _ in range(len(picks) - len(out)))
    stats.decoded = decoded
    return out, decoded


@dataclass
class SampleStats:
    """What sampling did, for tests and the clip-length benchmark."""

    method: str = ""  # the path that gave the frames: "seek" or "scan"
    touched: bool = False  # the seek path used the decoder (a scan then needs a fresh one)
    jumps: int = 0  # decoder flushes to start at a later key frame
    decoded: int = 0  # frames that came out of the decoder
    timestamps: list[int | None] = field(default_factory=list)  # of the frames kept, in pick order


def seek(
    name: str,
    ctx: VideoCodecContext,
    index: FrameIndex,
    picks: np.ndarray,
    convert: Converter,
    limits: Limits,
    stats: SampleStats | None = None,
) -> list[np.ndarray] | None:
    """The frames at `picks` (indices in presentation order) by key-frame seeking, or None when
    this stream cannot be sampled that way (the caller then scans)."""
    order, starts = index.presentation(), index.starts()
    if index.packets is None or order is None or starts is None:
        return None
    packets = index.packets
    key_stamps, key_positions = starts
    stats = stats if stats is not None else SampleStats()
    targets = [order[int(i)] for i in picks]
    wanted = set(targets)
    kept: dict[int, np.ndarray] = {}
    ready: deque[av.VideoFrame] = deque()  # decoded, not yet looked at (presentation order)
    sent = -1  # packets[:sent] went to the decoder; -1: nothing yet
    drained = False
    try:
        for t in targets:
            if t in kept:
                continue
            k = bisect.bisect_right(key_stamps, t) - 1
            start = key_positions[k] if k >= 0 else 0  # before the first key frame: from the first packet
            stats.touched = True
            if sent < 0 or start > sent:
                if sent >= 0:  # a later GOP: skip what lies between
                    ctx.flush_buffers()
                    ready.clear()
                    stats.jumps += 1
                sent, drained = start, False
            while True:
                if not ready:
                    if drained:
                        return None  # the wanted frame never came out: let the scan decide
                    if sent < len(packets):
                        # On the way to a wanted frame, frames that nothing refers to (most B-frames)
                        # need no decoding: the reference frames decode the same without them.
                        ctx.skip_frame = "DEFAULT" if index.pts[sent] in wanted else "NONREF"
                        ready.extend(ctx.decode(packets[sent]))
                        sent += 1
                    else:
                        ctx.skip_frame = "DEFAULT"
                        ready.extend(ctx.decode(None))
                        drained = True
                    continue
                frame = ready.popleft()
                stats.decoded += 1
                _check_pixels(name, frame, limits)
                if frame.pts is None:
                    return None
                if frame.pts < t:
                    continue
                if frame.pts > t:
                    return None
                kept[t] = convert(frame)
                break
    except MemoryError as exc:
        raise memory_error(name) from exc
    except (av.error.FFmpegError, ValueError) as exc:
        log.info("%s: seeking gave up (%s); scanning instead", name, exc)
        return None
    stats.method, stats.timestamps = "seek", list(targets)
    return [kept[t] for t in targets]
