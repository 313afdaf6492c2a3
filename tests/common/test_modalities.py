"""The modality registry and the two kinds without a time axis: images and text."""

from __future__ import annotations

import io
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter

from common.manifest import ModalityEntry
from common.media_types import DecodeError, ImageSpec, Limits, MediaLimitError, TextSpec, UnsupportedFormatError
from common.modalities import KINDS, borrow, borrowing, decode, kind, names
from common.modalities.image import FORMATS, load_image
from common.modalities.text import read_text, text_bytes

SPEC = ImageSpec(height=32, width=32)


class Upload(io.BytesIO):
    def __init__(self, data: bytes, name: str = "upload") -> None:
        super().__init__(data)
        self.name = name


def _square(mode: str = "RGB") -> Image.Image:
    """A white square in the top-left quarter of a black 64 x 48 picture."""
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:24, :32] = 255
    return Image.fromarray(pixels).convert(mode)


def _encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


# --- the registry -------------------------------------------------------------------------


def test_every_kind_is_registered_once_under_its_own_name() -> None:
    assert names() == ("audio", "video", "image", "text")
    for name, k in KINDS.items():
        assert k.name == name
        assert k.entry.model_fields["kind"].default == name  # a manifest entry names its kind
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        kind("smell")


@pytest.mark.parametrize("name", names())
def test_each_kind_s_settings_agree_with_its_input_and_entry(name: str) -> None:
    k = kind(name)
    for encoder in ("small", "resnet18"):
        settings = k.defaults(encoder)
        k.check(settings)
        dtype, shape = k.input(settings)
        assert dtype in ("float32", "uint8")
        assert all(isinstance(d, int) and d > 0 for d in shape)
        blank = k.blank(k.spec(settings), settings)
        assert blank.shape == shape
        assert blank.dtype == np.dtype(dtype)
        assert not blank.any()
        # what an export writes, read back, gives the decoder the same spec
        back = k.settings_from_entry(k.entry.model_construct(**k.entry_fields(settings)))
        assert k.spec({**settings, **back}) == k.spec(settings)


def test_a_manifest_entry_is_validated_by_its_own_kind() -> None:
    text_entry = {
        "kind": "text",
        "file": "text.onnx",
        "sha256": "0" * 64,
        "input": {"name": "bytes", "dtype": "uint8", "shape": ["batch", 64]},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", 2]},
        "parity_sample": "parity/text.npz",
        "parity_sample_sha256": "0" * 64,
        "max_bytes": 64,
    }
    entries = TypeAdapter(dict[str, ModalityEntry]).validate_python({"text": text_entry})
    assert type(entries["text"]).__name__ == "TextEntry"
    assert entries["text"].max_bytes == 64  # type: ignore[attr-defined]
    assert entries["text"].model_dump()["max_bytes"] == 64  # serialised as its kind's model, not as the base
    with pytest.raises(ValueError, match="max_bytes"):
        TypeAdapter(dict[str, ModalityEntry]).validate_python({"text": {k: v for k, v in text_entry.items() if k != "max_bytes"}})
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        TypeAdapter(dict[str, ModalityEntry]).validate_python({"x": {**text_entry, "kind": "smell"}})


def test_borrowing_fills_the_target_from_its_source_and_refuses_the_rest() -> None:
    assert borrowing() == {"use_video_audio": ("audio", "video")}
    files: dict[str, object] = {"video": "clip.mp4"}
    borrow(files, {"use_video_audio": True})
    assert files == {"video": "clip.mp4", "audio": "clip.mp4"}
    unchanged: dict[str, object] = {"video": "clip.mp4"}
    borrow(unchanged, {"use_video_audio": False})
    assert unchanged == {"video": "clip.mp4"}
    with pytest.raises(ValueError, match="use_video_audio needs a video file"):
        borrow({"audio": "a.wav"}, {"use_video_audio": True})
    with pytest.raises(ValueError, match="send an audio file or use_video_audio=true, not both"):
        borrow({"audio": "a.wav", "video": "v.mp4"}, {"use_video_audio": True})
    with pytest.raises(ValueError, match="not both"):
        borrow({"video": "v.mp4"}, {"use_video_audio": True}, others={"audio"})


# --- text ---------------------------------------------------------------------------------


def test_text_is_normalised_before_it_becomes_bytes() -> None:
    composed, decomposed = "z\u00e9ro", "ze\u0301ro"
    assert composed != decomposed
    assert unicodedata.normalize("NFC", decomposed) == composed
    assert np.array_equal(text_bytes(composed, 16), text_bytes(decomposed, 16))
    row = text_bytes("  two\t\x00three\n\n", 16)
    assert bytes(row[row > 0]) == b"two three"  # controls as spaces, runs of space as one, trimmed
    assert row.dtype == np.uint8
    assert row.shape == (16,)
    assert not row[len("two three") :].any()


@pytest.mark.parametrize("cut", range(1, 12))
def test_text_is_cut_at_a_character_boundary(cut: int) -> None:
    text = "åtta fünf"  # two-byte characters at several places
    row = text_bytes(text, cut)
    kept = bytes(row).rstrip(b"\0")
    assert text.encode().startswith(kept)
    kept.decode("utf-8")  # never half a character
    assert len(kept) >= cut - 1  # at most the one character that did not fit is dropped


def test_text_that_is_not_utf8_or_is_empty_or_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match=r"not UTF-8 \(byte 3"):
        read_text(Upload(b"one\xff"), Limits())
    with pytest.raises(DecodeError, match="the text is empty"):
        text_bytes(" \n\t ", 8)
    with pytest.raises(MediaLimitError, match="longer than 10 bytes"):
        read_text(Upload(b"x" * 11), Limits(max_bytes=10))
    path = tmp_path / "t.txt"
    path.write_bytes(b"sept")
    assert read_text(path, Limits(max_bytes=4)) == "sept"  # a file at the limit is read whole
    row = decode("text", path, TextSpec(max_bytes=8), Limits(max_bytes=100))
    assert bytes(row[:4]) == b"sept"


# --- images -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_png_jpeg_and_webp_decode_to_the_model_size(fmt: str, mode: str) -> None:
    if fmt == "JPEG" and mode == "RGBA":
        pytest.skip("JPEG has no alpha")
    out = load_image(Upload(_encoded(_square(mode), fmt)), SPEC, Limits(max_pixels=64 * 48), FORMATS)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8
    # stretched, not cropped: the white quarter stays the top-left quarter (lossy codecs blur its edge)
    assert out[:14, :14].min() > 200
    assert out[18:, 18:].max() < 60


def test_an_image_larger_than_the_limit_is_refused_before_it_is_decoded() -> None:
    data = _encoded(_square(), "PNG")
    with pytest.raises(MediaLimitError, match="64x48, more than 3000 pixels"):
        load_image(Upload(data), SPEC, Limits(max_pixels=3000), FORMATS)


def test_a_header_that_claims_a_huge_image_costs_nothing() -> None:
    """A PNG whose header says 100000 x 100000 (30 GB decoded) over a few bytes of data: refused by the size it declares."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\0" * 64)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )
    with pytest.raises(MediaLimitError, match="more pixels"):
        load_image(Upload(data), SPEC, Limits(max_pixels=4096 * 4096), FORMATS)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (lambda: _encoded(_square(), "GIF"), "a.gif"),
        (lambda: _encoded(_square(), "BMP"), "a.bmp"),
        (lambda: b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 40, "a.wav"),
    ],
    ids=["gif", "bmp", "wav"],
)
def test_what_is_not_png_jpeg_or_webp_is_refused(data: object, name: str) -> None:
    with pytest.raises((UnsupportedFormatError, DecodeError)):
        load_image(Upload(data(), name), SPEC, Limits(max_pixels=10**6), FORMATS)  # type: ignore[operator]


def test_broken_image_bytes_are_a_decode_error() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = _encoded(Image.fromarray(noise), "PNG")
    with pytest.raises(DecodeError):
        load_image(Upload(data[: len(data) // 3]), SPEC, Limits(max_pixels=10**6), FORMATS)
    with pytest.raises((DecodeError, UnsupportedFormatError)):
        load_image(Upload(b"\x89PNG\r\n\x1a\nnot a png at all"), SPEC, Limits(max_pixels=10**6), FORMATS)
