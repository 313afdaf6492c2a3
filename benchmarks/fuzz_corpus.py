"""What the fuzz harness sends: real media as seeds, mutations of them, hostile files, broken multipart.

Seeds are real files: demo clips (wav, mp4), the same clip re-encoded in every accepted
container, GRID clips and FSDD recordings from ../shared/data when present, and the hostile
constructions of benchmarks/hostile.py. Each request is drawn from a seeded generator, so a
run is reproducible from its seed.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import hostile
from common.media import AudioSpec, VideoSpec, load_audio, load_video
from training.data.demo import generate
from training.data.writers import write_audio, write_video

ROOT = Path(__file__).resolve().parents[1]
INFER = "/v2/infer"  # the harness sends it to /v2/models/<the model's name>/infer
HEADER_LENGTH = "inference-header-content-length"
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Seed:
    name: str
    data: bytes
    kind: str  # "audio", "video" (with an audio track or not), or "other"


@dataclass
class Request:
    """One request: multipart parts (field, filename, bytes) and form values, or a raw body with its headers."""

    what: str
    parts: list[tuple[str, str, bytes]] = field(default_factory=list)
    form: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    route: str = "/v1/predict"  # or INFER: the Open Inference Protocol's infer route of the model served


def build_seeds(workdir: Path, shared: Path = SHARED) -> list[Seed]:
    """Real media to mutate: every accepted container, from generated demo clips and the shared data."""
    demo = generate(workdir / "demo", seed=11, sizes={"train": 6, "val": 0, "test": 0})
    media = sorted((demo.parent / "media").glob("*"))
    seeds = [Seed(p.name, p.read_bytes(), "audio" if p.suffix == ".wav" else "video") for p in media]
    wav = next(p for p in media if p.suffix == ".wav")
    mp4 = next(p for p in media if p.suffix == ".mp4")
    wave = load_audio(wav, AudioSpec(16_000, 16_000))
    frames = load_video(mp4, VideoSpec(16, 64, 64))
    out = workdir / "containers"
    out.mkdir(exist_ok=True)
    writers: dict[str, Callable[[Path], None]] = {
        "a.flac": lambda p: write_audio(p, wave, 16_000, codec="flac"),
        "a.mp3": lambda p: write_audio(p, wave, 22_050, codec="libmp3lame"),
        "a.ogg": lambda p: write_audio(p, wave, 48_000, codec="libopus", fmt="ogg"),
        "a.aac": lambda p: write_audio(p, wave, 16_000, codec="aac", fmt="adts"),
        "v.mkv": lambda p: write_video(p, frames, 16, codec="libvpx", audio=wave, sample_rate=48_000, audio_codec="libopus"),
        "v.flv": lambda p: write_video(
            p, frames, 16, codec="flv", fmt="flv", audio=wave, sample_rate=22_050, audio_codec="libmp3lame"
        ),
        "v.avi": lambda p: write_video(p, frames, 16, codec="mpeg4", fmt="avi", audio=wave, audio_codec="libmp3lame"),
        "v.ts": lambda p: write_video(p, frames, 16, codec="mpeg2video", fmt="mpegts", audio=wave, audio_codec="mp2"),
        "v.mp4": lambda p: write_video(p, frames, 16, codec="libx264", audio=wave, audio_codec="aac"),
    }
    for name, write in writers.items():
        write(out / name)
        seeds.append(Seed(name, (out / name).read_bytes(), "audio" if name.startswith("a.") else "video"))
    if shared.is_dir():
        seeds += [Seed(p.name, p.read_bytes(), "video") for p in sorted((shared / "grid").glob("*.mpg"))[:4]]
        seeds += [Seed(p.name, p.read_bytes(), "audio") for p in sorted((shared / "fsdd" / "recordings").glob("*.wav"))[:6]]
    return seeds


def hostile_seeds(workdir: Path) -> list[Seed]:
    fifo = workdir / "never-opened.ts"
    return [
        Seed("high_rate.wav", hostile.high_rate_wav(), "other"),
        Seed("nan.wav", hostile.nonfinite_wav(), "other"),
        Seed("inf.wav", hostile.nonfinite_wav(float("inf")), "other"),
        Seed("nodecoder.avi", hostile.no_decoder_avi(), "other"),
        Seed("lostcodec.mkv", hostile.lost_codec_mkv("video"), "other"),
        Seed("lostaudio.mkv", hostile.lost_codec_mkv("audio"), "video"),
        Seed("ratechange.mp3", hostile.format_change_mp3(), "audio"),
        Seed("static.mp4", hostile.static_h264(300, 640, 360), "video"),
        Seed("list.m3u8", hostile.hls_playlist(fifo), "other"),
        Seed("concat.txt", f"ffconcat version 1.0\nfile '{fifo}'\n".encode(), "other"),
    ]


# --- mutations: each takes the bytes and a generator and returns new bytes -------------------------
def bit_flips(b: bytes, rng: random.Random) -> bytes:
    a = bytearray(b)
    for _ in range(rng.choice((1, 2, 8, 64))):
        i = rng.randrange(len(a))
        a[i] ^= 1 << rng.randrange(8)
    return bytes(a)


def header_rewrite(b: bytes, rng: random.Random) -> bytes:
    """Overwrite a few bytes near the start, where containers keep their sizes, rates and codec ids."""
    a = bytearray(b)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(min(len(a), 512))
        a[i : i + 4] = rng.choice((b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff", rng.randbytes(4)))
    return bytes(a[: len(b)])


def truncate(b: bytes, rng: random.Random) -> bytes:
    return b[: rng.randrange(1, len(b))]


def chunk_edit(b: bytes, rng: random.Random) -> bytes:
    i, j = sorted(rng.randrange(len(b)) for _ in range(2))
    op = rng.randrange(3)
    if op == 0:
        return b[:i] + b[j:]  # delete
    if op == 1:
        return b[:j] + b[i:j] + b[j:]  # duplicate
    return b[:i] + rng.randbytes(j - i) + b[j:]  # overwrite with noise


def splice(b: bytes, rng: random.Random, other: bytes = b"") -> bytes:
    return b[: rng.randrange(len(b))] + other[rng.randrange(len(other)) :] if other else b


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit_flips": bit_flips,
    "header_rewrite": header_rewrite,
    "truncate": truncate,
    "chunk_edit": chunk_edit,
}
EXTENSIONS = (".wav", ".mp4", ".mkv", ".mp3", ".flac", ".avi", ".png", ".m3u8", "", ".txt")


def _multipart_body(req: Request, boundary: str) -> bytes:
    body = b""
    for fld, filename, data in req.parts:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{fld}"; filename="{filename}"\r\n\r\n'.encode()
        body += data + b"\r\n"
    for k, v in req.form.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    return body + f"--{boundary}--\r\n".encode()


def broken_multipart(rng: random.Random, sample: bytes) -> Request:
    """A request whose multipart framing is wrong in one of the ways clients and attackers get it wrong."""
    boundary = "fz" + str(rng.randrange(10**6))
    good = _multipart_body(Request("x", parts=[("audio", "a.wav", sample)]), boundary)
    ctype = f"multipart/form-data; boundary={boundary}"
    kind = rng.randrange(11)
    if kind == 0:
        return Request(
            "long_boundary",
            raw=good.replace(boundary.encode(), b"b" * 300),
            headers={"content-type": ctype.replace(boundary, "b" * 300)},
        )
    if kind == 1:
        return Request("no_closing_boundary", raw=good[: -len(boundary) - 6], headers={"content-type": ctype})
    if kind == 2:
        return Request(
            "preamble_epilogue", raw=rng.randbytes(2000) + b"\r\n" + good + rng.randbytes(5000), headers={"content-type": ctype}
        )
    if kind == 3:
        return Request("no_boundary_param", raw=good, headers={"content-type": "multipart/form-data"})
    if kind == 4:
        return Request(
            "wrong_content_type",
            raw=good,
            headers={"content-type": rng.choice(("application/json", "text/plain", "image/png", ""))},
        )
    if kind == 5:
        return Request("garbage_body", raw=rng.randbytes(rng.randrange(1, 20_000)), headers={"content-type": ctype})
    if kind == 6:
        header = b"X-Junk: " + b"a" * rng.choice((100, 10_000, 200_000)) + b"\r\n"
        return Request(
            "huge_part_header",
            raw=good.replace(b"Content-Disposition", header + b"Content-Disposition", 1),
            headers={"content-type": ctype},
        )
    if kind == 7:
        return Request("unknown_field", parts=[("subtitles", "s.srt", b"1\n")])
    if kind == 8:
        return Request("field_twice", parts=[("audio", "a.wav", sample), ("audio", "b.wav", sample)])
    if kind == 9:
        value = rng.choice(("maybe", "2", "TRUE ", "x" * 2000, "\x00"))
        return Request("bad_form_value", parts=[("audio", "a.wav", sample)], form={"use_video_audio": value})
    return Request("over_the_limit", raw=good + b"\0" * (5 * 2**20), headers={"content-type": ctype})


def _bytes_tensor(elements: list[bytes]) -> bytes:
    """The binary extension's BYTES: each element a 4-byte little-endian length, then its bytes (written here, not
    taken from the service, so the harness does not share the code it tests)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def as_inference(req: Request, rng: random.Random) -> Request:
    """The same files as an Open Inference Protocol request: one BYTES input per part, in the binary extension or as
    base64 JSON; the form's use_video_audio as a parameter."""
    params: dict[str, object] = {}
    if req.form.get("use_video_audio") in ("true", "false"):
        params["use_video_audio"] = req.form["use_video_audio"] == "true"
    if rng.random() < 0.6:
        inputs = [
            {"name": fld, "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(data) + 4}}
            for fld, _, data in req.parts
        ]
        head = json.dumps({"inputs": inputs, "parameters": params}).encode()
        body = head + b"".join(_bytes_tensor([data]) for _, _, data in req.parts)
        headers = {HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"}
        return Request(f"oip-binary:{req.what}", raw=body, headers=headers, route=INFER)
    inputs = [
        {
            "name": fld,
            "shape": [1],
            "datatype": "BYTES",
            "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(data).decode()],
        }
        for fld, _, data in req.parts
    ]
    body = json.dumps({"inputs": inputs, "parameters": params}).encode()
    return Request(f"oip-json:{req.what}", raw=body, headers={"content-type": "application/json"}, route=INFER)


def broken_inference(rng: random.Random, sample: bytes) -> Request:
    """An Open Inference Protocol body broken in one way: its lengths, its JSON, its tensors."""
    element = _bytes_tensor([sample])
    one = {"name": "audio", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}
    head = json.dumps({"inputs": [one]}).encode()
    binary = {HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"}
    kind = rng.randrange(10)
    if kind == 0:
        return Request("oip:header_length_past_the_body", raw=head + element, headers={HEADER_LENGTH: str(10**9)}, route=INFER)
    if kind == 1:
        headers = {HEADER_LENGTH: rng.choice(("-5", "0x10", "", "1e3", "9" * 40))}
        return Request("oip:header_length_not_a_count", raw=head + element, headers=headers, route=INFER)
    if kind == 2:
        return Request("oip:binary_cut_short", raw=head + element[: rng.randrange(len(element))], headers=binary, route=INFER)
    if kind == 3:
        lying = struct.pack("<I", rng.choice((2**32 - 1, len(sample) + 1, 10**8))) + sample
        return Request("oip:element_length_lies", raw=head + lying, headers=binary, route=INFER)
    if kind == 4:
        return Request("oip:trailing_bytes", raw=head + element + rng.randbytes(100), headers=binary, route=INFER)
    if kind == 5:
        garbage = rng.choice((rng.randbytes(rng.randrange(1, 2000)), b"{" * 5000, b'{"inputs": [' + b"[" * 3000, b"null"))
        return Request("oip:garbage_json", raw=garbage, headers={"content-type": "application/json"}, route=INFER)
    if kind == 6:
        nested: object = [0.0]
        for _ in range(rng.choice((20, 200))):
            nested = [nested]
        tensor = {"name": "audio/waveform", "shape": [1, 1], "datatype": "FP32", "data": nested}
        return Request("oip:deep_data", raw=json.dumps({"inputs": [tensor]}).encode(), route=INFER)
    if kind == 7:
        tensor = {
            "name": rng.choice(("audio/waveform", "video/frames", "audio", "x/y")),
            "shape": rng.choice(([10**9, 10**9], [1, -1], [2**62], [])),
            "datatype": rng.choice(("FP32", "UINT8", "BYTES", "FP16", "INT64")),
            "data": [1.0, "x", None, True],
        }
        return Request("oip:wrong_tensor", raw=json.dumps({"inputs": [tensor]}).encode(), route=INFER)
    if kind == 8:
        outputs = [
            {
                "name": rng.choice(("label", "nope", "video/weight", "")),
                "parameters": {"binary_data": rng.choice((1, "yes", True))},
            }
        ]
        body = json.dumps({"inputs": [one], "outputs": outputs}).encode()
        return Request("oip:odd_outputs", raw=body + element, headers={**binary, HEADER_LENGTH: str(len(body))}, route=INFER)
    return Request("oip:over_the_limit", raw=head + element + b"\0" * (5 * 2**20), headers=binary, route=INFER)


def draw(rng: random.Random, seeds: list[Seed], hostile_files: list[Seed]) -> Request:
    """One request: mostly mutated real media, then hostile files, broken multipart and clean controls; a quarter of
    those with files go as Open Inference Protocol requests, and some protocol bodies are broken on purpose."""
    if rng.random() < 0.06:
        return broken_inference(rng, rng.choice([s for s in seeds if s.kind == "audio"]).data)
    req = _draw_upload(rng, seeds, hostile_files)
    if req.parts and rng.random() < 0.25:
        return as_inference(req, rng)
    return req


def _draw_upload(rng: random.Random, seeds: list[Seed], hostile_files: list[Seed]) -> Request:
    roll = rng.random()
    media = [s for s in seeds if s.kind != "other"]
    if roll < 0.08:
        s = rng.choice(media)
        parts = [(s.kind, s.name, s.data)]
        form = {"use_video_audio": "true"} if s.kind == "video" and rng.random() < 0.5 else {}
        return Request(f"clean:{s.name}", parts=parts, form=form)
    if roll < 0.20:
        s = rng.choice(hostile_files)
        fld = rng.choice(("audio", "video"))
        form = {"use_video_audio": "true"} if fld == "video" and rng.random() < 0.5 else {}
        return Request(f"hostile:{s.name}", parts=[(fld, s.name, s.data)], form=form)
    if roll < 0.30:
        return broken_multipart(rng, rng.choice([s for s in media if s.kind == "audio"]).data)
    # mutated media, possibly in the wrong field, with a wrong name, or both fields
    s = rng.choice(media)
    how = rng.choice(list(MUTATIONS))
    data = MUTATIONS[how](s.data, rng)
    if rng.random() < 0.1:
        data = splice(data, rng, rng.choice(media).data)
        how += "+splice"
    fld = s.kind if rng.random() < 0.8 else ("video" if s.kind == "audio" else "audio")
    name = s.name if rng.random() < 0.8 else "upload" + rng.choice(EXTENSIONS)
    parts = [(fld, name, data)]
    if rng.random() < 0.25:
        other = rng.choice([m for m in media if m.kind != fld] or media)
        other_field = "video" if fld == "audio" else "audio"
        parts.append((other_field, other.name, MUTATIONS[rng.choice(list(MUTATIONS))](other.data, rng)))
    form = {"use_video_audio": rng.choice(("true", "false"))} if rng.random() < 0.2 else {}
    return Request(f"{how}:{s.name}->{fld}", parts=parts, form=form)
