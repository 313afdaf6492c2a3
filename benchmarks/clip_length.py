"""Decoding cost against clip length: the key-frame seek path against the linear scan, one run.

    python -m benchmarks.clip_length [--inputs 4x32 3x224 16x224] [--repeats 3]

Synthetic H.264 clips (libx264, 25 fps, a key frame every 1.9 s, 3 B-frames, moving content) of
5, 15, 30 and 60 s at 480p and 1080p, plus a long-GOP variant (a key frame every 9.6 s, near x264's
default of 250 frames), and 16-bit wavs (44.1 kHz stereo) of 5 and 60 s. Each file is decoded
the way the service does it (one FFmpeg thread, the model's frame count and size) by both
paths; the figure is CPU seconds of this process (median of `--repeats`), so other jobs on the
machine slow it less than wall time. Every ratio compares figures from this run: the 60 s clip
against the 5 s one at the same resolution, and seek against scan on the same clip. The seek
path must give the scan's arrays exactly: the benchmark fails otherwise.

Results: benchmarks/results/clip_length.json and .md. Clips are cached under runs/clip_length/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.report import markdown_table, write
from common.frames import SampleStats
from common.media import AudioSpec, VideoSpec, load_audio, load_video

ROOT = Path(__file__).resolve().parents[1]
FPS = 25
RESOLUTIONS = {"480p": (854, 480), "1080p": (1920, 1080)}
SECONDS = (5, 15, 30, 60)
# GOP lengths in frames: about 2 s (a camera's or a streaming encoder's) and about 10 s (x264's
# default 250), both prime, so that the sampled frames fall at assorted depths into their GOPs
# as in real footage; a GOP that divides the clip would put some of them exactly on key frames
# and flatter the seek path (50 frames put all three of a 3-frame model's picks of a 60 s clip there).
GOP_SHORT, GOP_LONG = 47, 241


def _pattern(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured luma plane twice as wide as the frame (it slides) and flat chroma."""
    yy, xx = np.mgrid[0:height, 0 : 2 * width]
    luma = (128 + 60 * np.sin(xx / 23.0) * np.cos(yy / 17.0) + 30 * np.sin((xx + yy) / 7.0)).astype(np.uint8)
    return luma, np.full((height // 2, width), 128, np.uint8)


def make_clip(path: Path, seconds: int, width: int, height: int, gop: int) -> None:
    """H.264 in MP4: a sliding texture with a bright box crossing it, so every frame differs."""
    luma, chroma = _pattern(width, height)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": f"bframes=3:keyint={gop}:min-keyint={gop}"}
        for i in range(seconds * FPS):
            shift = (4 * i) % width
            y = np.ascontiguousarray(luma[:, shift : shift + width])
            box = (7 * i) % (width - height // 4)
            y[height // 3 : height // 3 + height // 4, box : box + height // 4] = 235
            frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.replace(path)


def make_wav(path: Path, seconds: int, rate: int = 44_100) -> None:
    t = np.arange(seconds * rate) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.stack([wave, wave], axis=1).reshape(1, -1), format="flt", layout="stereo")
    frame.sample_rate = rate
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo")
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=rate)
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of this process per call (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--inputs",
        nargs="+",
        default=["4x32", "3x224", "16x224"],
        help="model inputs, FRAMESxSIZE (default: the small encoder, ResNet-18's, and 16 frames)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "clip_length")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    specs = [VideoSpec(int(f), int(px), int(px)) for f, px in (x.split("x") for x in args.inputs)]
    clips: list[tuple[str, str, int, int]] = []  # (resolution, gop label, seconds, gop frames)
    for res in RESOLUTIONS:
        clips += [(res, "1.9 s", s, GOP_SHORT) for s in SECONDS]
    clips += [("480p", "9.6 s", s, GOP_LONG) for s in (5, 60)]
    rows: list[dict[str, Any]] = []
    for res, gop_label, seconds, gop in clips:
        width, height = RESOLUTIONS[res]
        path = args.cache / f"h264-{res}-{seconds}s-gop{gop}.mp4"
        if not path.exists():
            print(f"encoding {path.name}", flush=True)
            make_clip(path, seconds, width, height, gop)
        for spec in specs:
            stats = SampleStats()
            seek = load_video(path, spec, threads=1, stats=stats)
            scan = load_video(path, spec, threads=1, method="scan")
            if stats.method != "seek" or not np.array_equal(seek, scan):
                raise SystemExit(f"{path.name}: the seek path failed or its frames differ from the scan's")
            row = {
                "input": f"{spec.frames} x {spec.height}px",
                "resolution": res,
                "gop": gop_label,
                "seconds": seconds,
                "mb": path.stat().st_size / 1e6,
                "frames": seconds * FPS,
                "decoded_seek": stats.decoded,
                "seek_s": cpu_seconds(partial(load_video, path, spec, threads=1), args.repeats),
                "scan_s": cpu_seconds(partial(load_video, path, spec, threads=1, method="scan"), args.repeats),
            }
            rows.append(row)
            print(row, flush=True)
    audio = AudioSpec(16_000, 16_000)
    wavs = []
    for seconds in (5, 60):
        path = args.cache / f"tone-{seconds}s.wav"
        if not path.exists():
            make_wav(path, seconds)
        cost = cpu_seconds(partial(load_audio, path, audio), 20)
        wavs.append({"seconds": seconds, "mb": path.stat().st_size / 1e6, "s": cost})

    def base(r: dict[str, Any]) -> dict[str, Any]:
        key = ("input", "resolution", "gop")
        return next(b for b in rows if b["seconds"] == 5 and all(b[k] == r[k] for k in key))

    table = [
        [
            r["input"],
            r["resolution"],
            r["gop"],
            r["seconds"],
            r["mb"],
            r["frames"],
            r["decoded_seek"],
            r["scan_s"] * 1000,
            r["seek_s"] * 1000,
            r["seek_s"] / r["scan_s"],
            r["seek_s"] / base(r)["seek_s"],
            r["scan_s"] / base(r)["scan_s"],
        ]
        for r in rows
    ]
    ratios = {
        f"{r['input']}, {r['resolution']}, key frame every {r['gop']}": r["seek_s"] / base(r)["seek_s"]
        for r in rows
        if r["seconds"] == 60
    }
    wav_ratio = wavs[1]["s"] / wavs[0]["s"]
    load = os.getloadavg()
    md = (
        f"# Decoding cost against clip length ({os.cpu_count()} CPU cores, one FFmpeg thread)\n\n"
        "H.264 (libx264, 25 fps, 3 B-frames), CPU ms per clip, median of "
        f"{args.repeats}; the seek path's frames equal the scan's on every clip.\n\n"
        + markdown_table(
            [
                "model input",
                "resolution",
                "key frame every",
                "seconds",
                "MB",
                "frames",
                "frames decoded (seek)",
                "scan ms",
                "seek ms",
                "seek / scan",
                "seek / seek at 5 s",
                "scan / scan at 5 s",
            ],
            table,
        )
        + "\n\n60 s / 5 s cost with seeking (goal: at most 2):\n\n"
        + "\n".join(f"- {k}: {v:.2f}" for k, v in ratios.items())
        + "\n\nWhy: a sampled frame costs decoding the reference frames from its key frame to it, on average "
        "those of half a GOP; a 5 s clip's sampled frames share GOPs, a 60 s clip's each need their own. The 60 s / 5 s "
        "ratio therefore grows with frames x GOP, whatever the code: it stays near 2 or below only where the model takes "
        "few frames and the GOP is short.\n\n"
        f"Wav, 44.1 kHz stereo, to one 1 s window at 16 kHz: 5 s file {wavs[0]['s'] * 1000:.2f} ms, "
        f"60 s file {wavs[1]['s'] * 1000:.2f} ms, ratio {wav_ratio:.2f}.\n\n"
        f"Load average while measuring: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}.\n"
    )
    write(
        "clip_length",
        {"inputs": args.inputs, "video": rows, "wav": wavs, "ratios_60_5": ratios, "wav_ratio": wav_ratio, "load": load},
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
