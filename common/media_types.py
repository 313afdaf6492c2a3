"""The plain types of the media path: its errors, what a model wants (specs) and the bounds (limits).

Kept apart from the decoders so that common/media.py (audio, opening and checking files) and
common/frames.py (choosing and decoding video frames) share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


class MediaError(Exception):
    """A file that cannot be turned into model input."""


class DecodeError(MediaError):
    """The container or stream is corrupt, truncated, not media at all, or has no decoder here."""


class MissingStreamError(MediaError):
    """The file decodes but has no stream of the kind asked for (no audio track, say)."""


class MediaLimitError(MediaError):
    """The file is longer, larger, has more frames or needs more memory than the configured limit."""


class UnsupportedFormatError(MediaError):
    """The container is not one that is accepted."""


class StillImageError(MediaError):
    """A still image where audio or video was expected."""


@dataclass(frozen=True)
class AudioSpec:
    """How a waveform is prepared: resampled to `sample_rate`, padded/cropped to `samples`."""

    sample_rate: int
    samples: int


@dataclass(frozen=True)
class VideoSpec:
    """How a clip is prepared: `frames` frames sampled uniformly, resized to height x width."""

    frames: int
    height: int
    width: int


@dataclass(frozen=True)
class ImageSpec:
    """How a still image is prepared: resized (stretched) to height x width, RGB."""

    height: int
    width: int


@dataclass(frozen=True)
class TextSpec:
    """How text is prepared: NFC-normalised UTF-8, cut at a character boundary to at most `max_bytes`, zero-padded."""

    max_bytes: int


@dataclass(frozen=True)
class Limits:
    """Bounds checked before and while decoding.

    The first five are the caller's (None: unbounded); the sanity bounds below them hold for
    every file, in training too: no real recording has a rate, channel or stream count past them.
    """

    max_seconds: float | None = None
    max_pixels: int | None = None
    max_frames: int | None = None
    max_bytes: int | None = None  # a text input's UTF-8 bytes
    min_frames: int = 1
    min_sample_rate: int = 1_000
    max_sample_rate: int = 384_000
    max_channels: int = 32
    max_streams: int = 32

    def given(self) -> dict[str, float | int]:
        """The caller's bounds that are set (what a client is told), without the sanity bounds."""
        caller = ("max_seconds", "max_pixels", "max_frames", "max_bytes")
        return {k: v for k in caller if (v := getattr(self, k)) is not None}


NO_LIMITS = Limits()
