"""Key-frame seeking against the linear scan, on clips made here by real encoders.

Both paths must give the same frames (the same arrays, so training's decode cache stays valid)
at the same timestamps, on every codec and container the service takes, and the seek path must
decode less of a long clip.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from common import frames as frames_mod
from common.frames import SampleStats
from common.media import MEDIA_FORMATS, VideoSpec, load_video
from tests.conftest import shared_data

FPS = 25
SPEC = VideoSpec(frames=5, height=24, width=32)


def moving(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i has a bright block at column 3*i over a texture shifted by i: every frame differs."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (xx * 4 + i * 3) % 256
        out[i, ..., 1] = (yy * 5 + i) % 256
        out[i, ..., 2] = 60
        x0 = (3 * i) % (width - 8)
        out[i, 8:20, x0 : x0 + 8] = 250
    return out


class _Pipe:
    """A write-only file: the muxer cannot seek back, so Matroska gets no cues (no index)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)


def encode(
    path: Path,
    codec: str,
    fmt: str | None,
    n: int,
    gop: int,
    bframes: int = 0,
    options: dict[str, str] | None = None,
    pipe: bool = False,
) -> Path:
    sink = _Pipe(path) if pipe else None
    with av.open(sink if sink is not None else str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(FPS, 1))
        if not isinstance(stream, av.video.stream.VideoStream):
            raise TypeError(codec)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = bframes
        stream.thread_count = 1
        stream.options = dict(options or {})
        for i, rgb in enumerate(moving(n)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    if sink is not None:
        sink.file.close()
    return path


# name -> (codec, container, gop, B-frames, encoder options)
CLIPS = {
    "h264-bframes.mp4": ("libx264", None, 25, 3, {"x264-params": "bframes=3:b-pyramid=normal:keyint=25:min-keyint=25"}),
    "h264-long-gop-open.mkv": ("libx264", "matroska", 250, 3, {"x264-params": "bframes=3:keyint=250:open-gop=1"}),
    "h264-no-index.ts": ("libx264", "mpegts", 20, 2, {"x264-params": "bframes=2:keyint=20:min-keyint=20"}),
    "mpeg4.mp4": ("mpeg4", None, 12, 0, {}),
    "mpeg4-bframes.avi": ("mpeg4", "avi", 12, 2, {}),
    "mpeg1.mpg": ("mpeg1video", "mpeg", 15, 2, {}),
    "vp8-altref.webm": ("libvpx", "webm", 30, 0, {"auto-alt-ref": "1", "lag-in-frames": "16"}),
    "vp9.webm": ("libvpx-vp9", "webm", 30, 0, {"deadline": "realtime", "cpu-used": "8"}),
    "vp9-no-cues.mkv": ("libvpx-vp9", "matroska", 40, 0, {"deadline": "realtime", "cpu-used": "8"}),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seek-clips")
    out = {}
    for name, (codec, fmt, gop, bframes, options) in CLIPS.items():
        out[name] = encode(root / name, codec, fmt, 150, gop, bframes, options, pipe=name.endswith("no-cues.mkv"))
    return out


def frame_duration(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.time_base is not None
        return float(1 / (FPS * s.time_base))


def both(path: Path, spec: VideoSpec = SPEC) -> tuple[np.ndarray, SampleStats, np.ndarray, SampleStats]:
    seek_stats, scan_stats = SampleStats(), SampleStats()
    seek = load_video(path, spec, formats=MEDIA_FORMATS, threads=1, stats=seek_stats)
    scan = load_video(path, spec, formats=MEDIA_FORMATS, threads=1, method="scan", stats=scan_stats)
    return seek, seek_stats, scan, scan_stats


def assert_same_frames(path: Path, spec: VideoSpec = SPEC) -> SampleStats:
    seek, seek_stats, scan, scan_stats = both(path, spec)
    assert seek_stats.method == "seek", f"{path.name}: seeking gave up"
    one_frame = frame_duration(path)
    for a, b in zip(seek_stats.timestamps, scan_stats.timestamps, strict=True):
        assert a is not None
        assert b is not None
        assert abs(a - b) <= one_frame, f"{path.name}: seek chose {a}, scan {b}"
    np.testing.assert_array_equal(seek, scan, err_msg=path.name)
    return seek_stats


@pytest.mark.parametrize("name", sorted(CLIPS))
@pytest.mark.parametrize("count", [1, 5, 16, 200])
def test_seek_and_scan_choose_the_same_frames(clips: dict[str, Path], name: str, count: int) -> None:
    """Every codec and container, with more wanted frames than the clip has too (repeats)."""
    assert_same_frames(clips[name], VideoSpec(count, 24, 32))


def test_grid_clips_seek_to_the_same_frames() -> None:
    """Real MPEG-1 in MPEG-PS (no index, open GOPs with B-frames), as recorded."""
    for clip in sorted(shared_data("grid").glob("*.mpg"))[:4]:
        for spec in (VideoSpec(3, 224, 224), VideoSpec(16, 32, 32)):
            assert_same_frames(clip, spec)


def test_seeking_decodes_a_long_clip_only_near_the_wanted_frames(tmp_path: Path) -> None:
    """10 s with a key frame every second: 3 wanted frames need at most 3 GOPs, not the clip."""
    path = encode(tmp_path / "long.mp4", "libx264", None, 250, 25, 3, {"x264-params": "bframes=3:keyint=25:min-keyint=25"})
    stats = assert_same_frames(path, VideoSpec(3, 24, 32))
    assert stats.decoded <= 3 * 25
    assert stats.jumps == 2  # one GOP skipped forward per later wanted frame
    _, _, _, scan_stats = both(path, VideoSpec(3, 24, 32))
    assert scan_stats.decoded > 200  # the scan reads up to the last wanted frame (index 208)


def test_timestamps_that_cannot_place_frames_fall_back_to_the_scan(tmp_path: Path) -> None:
    """A raw H.264 stream carries no timestamps: the scan samples it, with the same result."""
    mp4 = encode(tmp_path / "src.mp4", "libx264", None, 60, 12, 2, {"x264-params": "bframes=2:keyint=12"})
    raw = tmp_path / "raw.h264"
    with av.open(str(mp4)) as src, av.open(str(raw), "w", format="h264") as dst:
        s = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = s
                dst.mux(packet)
    seek, seek_stats, scan, _ = both_unrestricted(raw)
    assert seek_stats.method == "scan"
    np.testing.assert_array_equal(seek, scan)


def both_unrestricted(path: Path) -> tuple[np.ndarray, SampleStats, np.ndarray, SampleStats]:
    seek_stats, scan_stats = SampleStats(), SampleStats()
    seek = load_video(path, SPEC, threads=1, stats=seek_stats)
    scan = load_video(path, SPEC, threads=1, method="scan", stats=scan_stats)
    return seek, seek_stats, scan, scan_stats


def test_a_stream_over_the_packet_budget_is_scanned(clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames_mod, "HOLD_BYTES", 1000)
    seek, seek_stats, scan, _ = both(clips["h264-bframes.mp4"])
    assert seek_stats.method == "scan"
    np.testing.assert_array_equal(seek, scan)


def test_a_truncated_stream_gives_the_same_frames_either_way(clips: dict[str, Path], tmp_path: Path) -> None:
    """Cut mid-file: both paths sample what demuxes, and agree."""
    data = clips["h264-no-index.ts"].read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) * 2 // 3])
    seek, _, scan, _ = both(cut)
    np.testing.assert_array_equal(seek, scan)
