"""Whatever a client sends, the answer is a 4xx JSON error, never a 500, and no file is left behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tests.servers import Server
from training.data.writers import write_audio, write_video


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    files = {}
    files["empty"] = d / "empty.wav"
    files["empty"].write_bytes(b"")
    files["random"] = d / "random.mp4"
    files["random"].write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    good = d / "good.mp4"
    write_video(good, rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8), 16, audio=0.1 * rng.normal(size=16_000))
    files["truncated"] = d / "truncated.mp4"
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["text"] = d / "notes.wav"
    files["text"].write_text("this is a text file, not a recording\n" * 100)
    files["still"] = d / "still.png"
    with av.open(str(files["still"]), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 64, 64, "rgb24"
        for packet in [
            *stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")),
            *stream.encode(None),
        ]:
            out.mux(packet)
    files["one_frame"] = d / "one.mp4"
    write_video(files["one_frame"], np.full((1, 64, 64, 3), 90, np.uint8), 16)
    files["silent_video"] = d / "silent.mp4"
    write_video(files["silent_video"], rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), 16)
    files["long"] = d / "two_hours.flac"  # two hours of silence: 1.3 MB of FLAC, 57.6 M samples
    with av.open(str(files["long"]), "w") as out:
        astream = out.add_stream("flac", rate=8000, layout="mono")
        minute = np.zeros((1, 8000 * 60), np.int16)
        for i in range(120):
            frame = av.AudioFrame.from_ndarray(minute, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * minute.shape[1]
            for packet in astream.encode(frame):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
    files["huge_frame"] = d / "huge.mkv"  # 10000 x 10000 = 100 megapixels a frame, a few kB of JPEG
    with av.open(str(files["huge_frame"]), "w") as out:
        vstream = out.add_stream("mjpeg", rate=1)
        vstream.width, vstream.height, vstream.pix_fmt = 10_000, 10_000, "yuvj420p"
        for i in range(2):
            vframe = av.VideoFrame.from_ndarray(np.full((15_000, 10_000), 128, np.uint8), format="yuvj420p")
            vframe.pts = i
            for packet in vstream.encode(vframe):
                out.mux(packet)
        for packet in vstream.encode(None):
            out.mux(packet)
    files["wav"] = d / "ok.wav"
    write_audio(files["wav"], 0.1 * rng.normal(size=16_000), 16_000)
    return files


CASES = [
    # (files: field -> key in `bad`, form, status, error code, words in the message)
    ({"audio": "empty"}, None, 400, "invalid_media", "empty"),
    ({"video": "empty"}, None, 400, "invalid_media", "empty"),
    ({"audio": "random"}, None, 400, "invalid_media", "cannot open"),
    ({"video": "random"}, None, 400, "invalid_media", "cannot open"),
    ({"video": "truncated"}, None, 400, "invalid_media", "video"),
    ({"audio": "text"}, None, 400, "invalid_media", "notes"),
    ({"video": "still"}, None, 400, "wrong_modality", "still image"),
    ({"video": "one_frame"}, None, 400, "invalid_media", "1 video frame"),
    ({"audio": "silent_video"}, None, 400, "wrong_modality", "no audio track"),
    ({"video": "silent_video"}, {"use_video_audio": "true"}, 400, "wrong_modality", "no audio track"),
    ({"video": "wav"}, None, 400, "wrong_modality", "no video track"),
    ({"audio": "long"}, None, 413, "too_large", "lasts 7200.0 s"),
    ({"video": "huge_frame"}, None, 413, "too_large", "10000x10000"),
    ({}, None, 422, "invalid_request", "at least one of the model's inputs: audio, video"),
    ({"audio": "wav"}, {"use_video_audio": "true"}, 422, "invalid_request", "needs a video"),
    ({"video": "one_frame"}, {"use_video_audio": "maybe"}, 422, "invalid_request", "true or false"),
    ({"audio": "wav"}, {"language": "en"}, 422, "invalid_request", "unknown field 'language'"),
    ({"subtitles": "wav"}, None, 422, "invalid_request", "unknown field 'subtitles'"),
]


@pytest.mark.parametrize(("files", "form", "status", "code", "words"), CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_gets_its_4xx(
    server: Server, bad: dict[str, Path], files: dict[str, str], form: dict[str, str] | None, status: int, code: str, words: str
) -> None:
    sent: dict[str, Path | tuple[str | None, bytes]] = {field: bad[key] for field, key in files.items()}
    if not sent and not form:
        sent = {"use_video_audio": (None, b"false")}  # multipart, but no file in it
    r = server.post(sent, data=form)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code
    assert words in body["error"]["message"]
    assert server.tmp_is_empty()


def test_upload_over_the_limit_is_refused(server: Server, bad: dict[str, Path]) -> None:
    blob = ("big.wav", b"\0" * (5 * 1024 * 1024))  # the server's limit is 4 MiB
    r = server.post({"audio": blob})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"
    assert server.tmp_is_empty()


def test_streamed_gigabyte_is_cut_off_at_the_limit(server: Server) -> None:
    """A chunked 1 GB upload (no Content-Length) is refused once 4 MiB have streamed in."""
    sent = 0
    boundary = "mla-test-boundary"

    def body() -> Iterator[bytes]:
        nonlocal sent
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="big.wav"\r\n\r\n'.encode()
        yield head
        chunk = b"\0" * (1 << 20)
        for _ in range(1024):
            sent += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    try:
        r = httpx.post(f"{server.url}/v1/predict", content=body(), headers=headers, timeout=60)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large"
    except httpx.HTTPError:
        pass  # the server may close the connection while the client is still sending: also a refusal
    assert sent < 64 * 1024 * 1024, f"{sent} bytes were read before the refusal"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    deadline = time.monotonic() + 5
    while not server.tmp_is_empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.tmp_is_empty()


def test_not_multipart_and_malformed_bodies(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/predict", json={"audio": "x"})
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_media"
    r = httpx.post(
        f"{server.url}/v1/predict", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code in (400, 422)
    assert "error" in r.json()
    r = httpx.post(f"{server.url}/v1/predict", content=b"", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400
    assert "boundary" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/no/such/route")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{server.url}/v1/predict")
    assert r.status_code == 405
    assert server.tmp_is_empty()


def test_field_sent_twice(server: Server, bad: dict[str, Path]) -> None:
    data = bad["wav"].read_bytes()
    r = httpx.post(f"{server.url}/v1/predict", files=[("audio", ("a.wav", data)), ("audio", ("b.wav", data))], timeout=30)
    assert r.status_code == 422
    assert "twice" in r.json()["error"]["message"]
    assert server.tmp_is_empty()
