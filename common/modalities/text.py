"""Text: UTF-8 text (a form value, or a text file) -> its bytes, uint8 [max_bytes], zero-padded.

Decoding is strict: bytes that are not UTF-8 are refused (a 400 for the client), as is text with
nothing but white space. The text is NFC-normalised (a composed "é" and "e" + combining accent
are the same input), control characters become spaces, runs of white space one space, and it is
cut at a character boundary to the model's `max_bytes`. Inside the graph: ASCII letters
lower-cased, each byte embedded, convolutions over byte n-grams, a max over the positions
holding text (training.models.encoders.TextEncoder). No tokenizer and no download: bytes cover
every language and spell a misspelt word almost as the right one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.media import source_name
from common.media_types import DecodeError, Limits, MediaLimitError, TextSpec
from common.modalities.base import EntryBase, Kind, Settings, Source

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


class TextEntry(EntryBase):
    kind: Literal["text"] = "text"
    max_bytes: int  # UTF-8 bytes the graph takes; longer text is cut at a character boundary
    encoding: Literal["utf-8"] = "utf-8"
    normalization: Literal["NFC"] = "NFC"


def text_bytes(text: str, max_bytes: int) -> np.ndarray:
    """Normalised text -> uint8 [max_bytes]: NFC, control characters as spaces, white space collapsed, cut at a
    character boundary, zero-padded. Raises DecodeError for text with nothing but white space."""
    text = _SPACES.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFC", text))).strip()
    if not text:
        raise DecodeError("the text is empty")
    data = text.encode("utf-8")[:max_bytes]
    data = data.decode("utf-8", "ignore").encode("utf-8")  # a character cut in two is dropped whole
    out = np.zeros(max_bytes, np.uint8)
    out[: len(data)] = np.frombuffer(data, np.uint8)
    return out


def read_text(source: Source, limits: Limits) -> str:
    """The UTF-8 text of a file or upload, at most `limits.max_bytes` bytes (MediaLimitError past it)."""
    name = source_name(source)
    cap = limits.max_bytes
    if isinstance(source, str | Path):
        with open(source, "rb") as f:
            data = f.read(-1 if cap is None else cap + 1)
    else:
        source.seek(0)
        data = source.read(-1 if cap is None else cap + 1)
    if cap is not None and len(data) > cap:
        raise MediaLimitError(f"{name}: the text is longer than {cap} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{name}: the text is not UTF-8 (byte {exc.start}: {exc.reason})") from None


class Text(Kind):
    name = "text"
    entry = TextEntry
    input_name = "bytes"
    field = "value"
    accept = "text/plain"
    description = "UTF-8 text: a form value, or a text file"
    formats = None
    encoder_class = "training.models.encoders:TextEncoder"

    def defaults(self, encoder: str) -> Settings:
        return {"max_bytes": 64}

    def check(self, settings: Mapping[str, Any]) -> None:
        if not 8 <= settings["max_bytes"] <= 65_536:
            raise ValueError(f"text max_bytes must be in 8..65536, got {settings['max_bytes']}")

    def spec(self, settings: Mapping[str, Any]) -> TextSpec:
        return TextSpec(max_bytes=int(settings["max_bytes"]))

    def input(self, settings: Mapping[str, Any]) -> tuple[Literal["float32", "uint8"], tuple[int, ...]]:
        return "uint8", (int(settings["max_bytes"]),)

    def entry_fields(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_bytes": int(settings["max_bytes"])}

    def settings_from_entry(self, entry: Any) -> Settings:
        return {"max_bytes": entry.max_bytes}

    def decode(self, source: Source, spec: TextSpec, limits: Limits, formats: frozenset[str] | None = None) -> np.ndarray:
        return text_bytes(read_text(source, limits), spec.max_bytes)

    def limits(self, server: Any) -> Limits:
        return Limits(max_bytes=server.max_text_bytes)


KIND = Text()
