"""The fuzz harness's second phase: a model with image and text inputs, and what hostile clients send it.

A tiny image + text model is trained here (scikit-learn's bundled 8 x 8 digits as PNGs, the digits' names as
text; seconds) and served like any other. Seeds: real PNG, JPEG and WebP files in every mode Pillow writes,
and texts in several scripts; hostile ones: a PNG header that claims 100000 x 100000, a 20000 x 20000 PNG of
zeros (a decompression bomb: 400 MB decoded from under a megabyte), GIF, BMP, TIFF and SVG files, an animated
WebP, a 1 x 20000 strip, CMYK and progressive JPEGs, 16-bit and palette PNGs; text that is not UTF-8, overlong
and surrogate encodings, NULs and controls, a byte-order mark, ten thousand combining marks, past the size limit.
The mutations are the first phase's (benchmarks.fuzz_corpus).
"""

from __future__ import annotations

import csv
import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.fuzz_corpus import MUTATIONS, Request, Seed, as_inference, splice

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FOREIGN = ("нуль", "一", "δύο", "तीन", "أربعة", "五", "шесть", "सात", "八", "ἐννέα")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target


def _png(pixels: np.ndarray, **kw: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", **kw)
    return out.getvalue()


def tiny_model(work: Path) -> Path:
    """Train and export a small image + text model on bundled digits; return its version folder."""
    from model_export.repository import export_run
    from training.config import TrainConfig
    from training.train import train

    images, labels = _digits()
    media = work / "media"
    media.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        big = np.kron(images[i], np.ones((4, 4), np.uint8))
        (media / f"{i}.png").write_bytes(_png(big))
        (media / f"{i}.txt").write_text(WORDS[labels[i]] if rng.random() < 0.8 else FOREIGN[labels[i]], encoding="utf-8")
        split = "train" if i < 200 else "val" if i < 250 else "test"
        rows.append({"label": str(labels[i]), "split": split, "image": f"media/{i}.png", "text": f"media/{i}.txt"})
    with (work / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = work / "run"
    train(f"csv:{work / 'manifest.csv'}", run, TrainConfig(method="mla", epochs=4, batch_size=32, workers=0, owm_alpha=10.0))
    return export_run(run, work / "models", name="still", version="1")


def _bomb_header() -> bytes:
    """A PNG whose header claims 100000 x 100000 over a few bytes of pixels."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    head = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\0" * 64)
    body = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + head + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _bomb_zeros(side: int = 20_000) -> bytes:
    """A real, valid grey PNG of side x side zeros: under a megabyte, side^2 bytes once decoded."""
    raw_row = b"\0" + b"\0" * side  # filter byte, then the row
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(raw_row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _saved(img: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def seeds() -> tuple[list[Seed], list[Seed]]:
    """(real images and texts to mutate, hostile ones)."""
    images, _ = _digits()
    rgb = Image.fromarray(np.kron(images[0], np.ones((8, 8), np.uint8))).convert("RGB")
    good = [
        Seed("d.png", _saved(rgb, "PNG"), "image"),
        Seed("d.jpg", _saved(rgb, "JPEG", quality=90), "image"),
        Seed("d.webp", _saved(rgb, "WEBP", quality=80), "image"),
        Seed("d-lossless.webp", _saved(rgb, "WEBP", lossless=True), "image"),
        Seed("grey.png", _saved(rgb.convert("L"), "PNG"), "image"),
        Seed("alpha.png", _saved(rgb.convert("RGBA"), "PNG"), "image"),
        Seed("palette.png", _saved(rgb.convert("P"), "PNG", transparency=0), "image"),
        Seed("progressive.jpg", _saved(rgb, "JPEG", progressive=True), "image"),
        Seed("cmyk.jpg", _saved(rgb.convert("CMYK"), "JPEG"), "image"),
        Seed("wide16.png", _png(np.full((8, 8), 40000, np.uint16)), "image"),
        *(Seed(f"{w}.txt", w.encode(), "text") for w in (*WORDS, *FOREIGN)),
        Seed("sentence.txt", "the number is Seven, I think — sept?".encode(), "text"),
    ]
    frames = [rgb, rgb.rotate(90)]
    animated = io.BytesIO()
    frames[0].save(animated, "WEBP", save_all=True, append_images=frames[1:])
    bad = [
        Seed("claims-huge.png", _bomb_header(), "image"),
        Seed("bomb.png", _bomb_zeros(), "image"),
        Seed("strip.png", _png(np.zeros((1, 20_000), np.uint8)), "image"),
        Seed("animated.webp", animated.getvalue(), "image"),
        Seed("d.gif", _saved(rgb, "GIF"), "image"),
        Seed("d.bmp", _saved(rgb, "BMP"), "image"),
        Seed("d.tiff", _saved(rgb, "TIFF"), "image"),
        Seed("d.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>', "image"),
        Seed("empty.png", b"", "image"),
        Seed("latin1.txt", "z\xe9ro".encode("latin-1"), "text"),
        Seed("overlong.txt", b"\xc0\xaf\xe0\x80\xaf", "text"),
        Seed("surrogate.txt", b"\xed\xa0\x80\xed\xb0\x80", "text"),
        Seed("nul.txt", b"se\x00ven\x00\x00", "text"),
        Seed("controls.txt", bytes(range(1, 32)), "text"),
        Seed("bom.txt", b"\xef\xbb\xbfsept", "text"),
        Seed("zalgo.txt", ("s" + "\u0301" * 10_000).encode(), "text"),
        Seed("huge.txt", b"seven " * 20_000, "text"),
        Seed("blank.txt", b" \t\n\r\x0b\x0c", "text"),
        Seed("rtl.txt", "\u202eneves".encode(), "text"),
    ]
    return good, bad


def draw(rng: random.Random, good: list[Seed], bad: list[Seed]) -> Request:
    """One request to the image + text model: clean controls, hostile files, mutated seeds, each in either field or
    both; a quarter as Open Inference Protocol requests."""
    roll = rng.random()
    if roll < 0.1:
        s = rng.choice(good)
        req = Request(f"clean:{s.name}", parts=[(s.kind, s.name, s.data)])
    elif roll < 0.3:
        s = rng.choice(bad)
        fld = s.kind if rng.random() < 0.8 else rng.choice(("image", "text"))
        req = Request(f"hostile:{s.name}", parts=[(fld, s.name, s.data)])
    else:
        s = rng.choice(good)
        how = rng.choice(list(MUTATIONS))
        data = MUTATIONS[how](s.data, rng)
        if rng.random() < 0.1:
            data = splice(data, rng, rng.choice(good).data)
            how += "+splice"
        fld = s.kind if rng.random() < 0.85 else ("text" if s.kind == "image" else "image")
        req = Request(f"{how}:{s.name}->{fld}", parts=[(fld, s.name, data)])
    if rng.random() < 0.3:  # the other input beside it
        other = "text" if req.parts[0][0] == "image" else "image"
        o = rng.choice([g for g in good if g.kind == other])
        req.parts.append((other, o.name, o.data))
    return as_inference(req, rng) if rng.random() < 0.25 else req
