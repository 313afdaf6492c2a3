"""Decoding uploads in worker processes, within the configured limits.

These functions run in a process pool: they take paths and plain values and return
numpy arrays, and a MediaError travels back to the event loop as itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common.media import MEDIA_FORMATS, AudioSpec, Limits, VideoSpec, load_audio, load_video


def decode_audio_file(path: Path, spec: AudioSpec, limits: Limits) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    return load_audio(path, spec, limits, MEDIA_FORMATS), time.perf_counter() - t0


def decode_video_file(path: Path, spec: VideoSpec, limits: Limits) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    return load_video(path, spec, limits, MEDIA_FORMATS), time.perf_counter() - t0


def warm_up() -> int:
    """Run in each worker once so that its imports happen before the first request."""
    import av  # noqa: F401

    return 0
