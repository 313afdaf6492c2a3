"""Hostile and broken uploads, built in code: the regression tests and the fuzz harness share them.

Each builder returns the bytes of one file (or one multipart body) that once made the
service answer 500, hang, or spend unbounded memory; issue 10 lists them. Real encoders
(PyAV) make the media; then a header field is rewritten or streams are spliced, as a
hostile client or a damaged file would.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from training.data.writers import write_audio, write_video

SR = 16_000


def tone(seconds: float = 1.0, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(data: bytes, rate: int, channels: int = 1, bits: int = 16, fmt_tag: int = 1) -> bytes:
    """A canonical 44-byte RIFF/WAVE header (any declared rate, however absurd) before `data`."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def high_rate_wav(rate: int = 99_999_999) -> bytes:
    """244 bytes: a header declaring `rate` Hz and 100 samples of silence (once: 0.9 GB in the resampler)."""
    return wav_bytes(b"\0" * 200, rate)


def nonfinite_wav(value: float = float("nan")) -> bytes:
    """float32 PCM at 16 kHz: half a second of tone with NaN (or inf) samples in it."""
    wave = tone(0.5)
    wave[1000:1100] = value
    return wav_bytes(wave.astype("<f4").tobytes(), SR, bits=32, fmt_tag=3)


def _built(suffix: str, write: object) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f.{suffix}"
        write(path)  # type: ignore[operator]
        return path.read_bytes()


def _frames(n: int = 16, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def no_decoder_avi() -> bytes:
    """An AVI (an accepted container) whose video FourCC names no codec FFmpeg has."""
    data = _built("avi", lambda p: write_video(p, _frames(), 16, codec="mpeg4", fmt="avi"))
    if data.count(b"FMP4") < 1:
        raise RuntimeError("FFmpeg's mpeg4 encoder no longer writes the FMP4 FourCC")
    return data.replace(b"FMP4", b"ZZZZ")


def lost_codec_mkv(track: str = "video") -> bytes:
    """A Matroska file with video and audio whose `track` codec id is rewritten to one no decoder has.

    With track="audio" the video decodes and the audio does not: `use_video_audio=true` then
    fails on its second job after the first one succeeded.
    """
    data = _built(
        "mkv", lambda p: write_video(p, _frames(), 16, codec="mpeg4", audio=tone(), sample_rate=48_000, audio_codec="libopus")
    )
    old, new = (b"V_MPEG4/ISO/ASP", b"V_NOPE4/ISO/ASP") if track == "video" else (b"A_OPUS", b"A_NOPE")
    if old not in data:
        raise RuntimeError(f"{old!r} is not in the Matroska file")
    return data.replace(old, new)


def format_change_mp3() -> bytes:
    """Two mp3 streams back to back, 22.05 kHz mono then 44.1 kHz mono: the frames change rate mid-stream."""
    first = _built("mp3", lambda p: write_audio(p, tone(0.6, 22_050), 22_050, codec="libmp3lame"))
    second = _built("mp3", lambda p: write_audio(p, tone(0.6, 44_100, 880.0), 44_100, codec="libmp3lame"))
    return first + _without_id3v2(second)


def _without_id3v2(mp3: bytes) -> bytes:
    """Drop a leading ID3v2 tag (10-byte header, syncsafe size), so frames follow frames directly."""
    if mp3[:3] != b"ID3":
        return mp3
    size = 0
    for b in mp3[6:10]:
        size = (size << 7) | (b & 0x7F)
    return mp3[10 + size :]


def static_h264(frames: int = 1200, width: int = 1280, height: int = 720) -> bytes:
    """A tiny H.264 file of many identical large frames (39 KB at the defaults): every frame
    kept decoded once took 1.7 GB in one worker."""

    def write(path: Path) -> None:
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=Fraction(30, 1))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "ultrafast", "crf": "30", "threads": "2"}
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="rgb24")
            for i in range(frames):
                frame.pts = i
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)

    return _built("mp4", write)


def hls_playlist(target: Path) -> bytes:
    """An HLS playlist naming a local file: the HLS demuxer would open and read it."""
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n".encode()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "mla-hostile") -> tuple[dict[str, str], bytes]:
    """(headers, body) of a multipart/form-data request: parts are (field, filename or None, data)."""
    body = b""
    for field, filename, data in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"content-type": f"multipart/form-data; boundary={boundary}"}, body


def long_boundary(length: int = 300) -> tuple[dict[str, str], bytes]:
    """A multipart body whose boundary is longer than python-multipart's maximum of 256 bytes."""
    return multipart([("audio", "a.wav", wav_bytes(b"\0" * 3200, SR))], boundary="b" * length)


def epilogue_stream(audio: bytes, epilogue_bytes: int, boundary: str = "mla-epilogue") -> tuple[dict[str, str], Iterator[bytes]]:
    """A valid multipart body followed by `epilogue_bytes` of junk after the closing boundary, streamed."""

    def body() -> Iterator[bytes]:
        _, data = multipart([("audio", "a.wav", audio)], boundary)
        yield data
        chunk = b"x" * (1 << 20)
        for _ in range(epilogue_bytes // len(chunk)):
            yield chunk

    return {"content-type": f"multipart/form-data; boundary={boundary}"}, body()
