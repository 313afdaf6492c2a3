"""Write real media files with PyAV: the demo dataset and test fixtures use these.

Generated datasets use FFmpeg's own MPEG-4 Part 2 encoder ("mpeg4", in mp4): the same frames
give the same bytes in every run. libx264 does not (its output changed from process to
process here even single-threaded), so it is used only where tests need H.264 media.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# codec -> pixel format it encodes from
_PIX_FMT = {"libx264": "yuv420p", "mpeg4": "yuv420p", "flv": "yuv420p", "mpeg1video": "yuv420p", "libvpx": "yuv420p"}


def _mux_audio(
    out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, wave: np.ndarray, sample_rate: int
) -> None:
    """Encode mono float audio through a resampler into whatever the codec wants."""
    frame = av.AudioFrame.from_ndarray(np.clip(wave, -1, 1).astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = sample_rate
    resampler = av.AudioResampler(
        format=stream.codec_context.format,
        layout=stream.codec_context.layout,
        rate=stream.codec_context.sample_rate,
        frame_size=stream.codec_context.frame_size or None,
    )
    for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
        for packet in stream.encode(chunk):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _audio_stream(out: av.container.OutputContainer, codec: str, sample_rate: int) -> av.audio.stream.AudioStream:
    stream = out.add_stream(codec, rate=sample_rate, layout="mono")
    if not isinstance(stream, av.audio.stream.AudioStream):
        raise TypeError(f"{codec} is not an audio codec")
    return stream


def write_audio(path: Path, wave: np.ndarray, sample_rate: int, codec: str = "pcm_s16le", fmt: str | None = None) -> None:
    """Mono float wave in [-1, 1] to an audio file (wav by default; flac, mp3, ... by codec)."""
    with av.open(str(path), "w", format=fmt) as out:
        _mux_audio(out, _audio_stream(out, codec, sample_rate), wave, sample_rate)


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int,
    codec: str = "libx264",
    fmt: str | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    audio_codec: str = "aac",
) -> None:
    """uint8 RGB frames [T, H, W, 3] (and optional mono audio) to a video file."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(fps, 1))
        if not isinstance(stream, av.video.stream.VideoStream):
            raise TypeError(f"{codec} is not a video codec")
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = _PIX_FMT.get(codec, "yuv420p")
        stream.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        elif codec == "mpeg4":
            stream.bit_rate = 4_000_000  # near-transparent at the demo's sizes: quantiser 2 to 4
            stream.options = {"qmin": "2", "qmax": "4"}
        astream = _audio_stream(out, audio_codec, sample_rate) if audio is not None else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if astream is not None and audio is not None:
            _mux_audio(out, astream, audio, sample_rate)
