"""The embedded demo dataset: made here, deterministically from a seed, with no download.

Ten classes. Audio: each class is a two-tone motif (a pitch pair, in order) with timing,
pitch and level jitter and background noise; it is the easier, dominant modality, as audio
is on CREMA-D. Video: one of scikit-learn's bundled 8x8 handwritten digits of the class,
scaled up, drifting across a noisy frame; harder to learn. A share of samples carries one
modality replaced by noise, so per-sample uncertainty matters at test time. Written as real
media (16-bit wav, MPEG-4 mp4) plus a CSV manifest, so it goes through the same decoding
path as user data.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from training.data.files import cache_root, write_manifest
from training.data.writers import write_audio, write_video

log = logging.getLogger(__name__)

DEMO_VERSION = 2  # bump when the recipe changes, so stale copies are rebuilt
SAMPLE_RATE = 16_000
CLIP_SECONDS = 1.0
FPS = 16
FRAME_SIZE = 64
SPLIT_SIZES = {"train": 2000, "val": 400, "test": 600}
CORRUPT_SHARE = 0.12  # per modality: this share of samples gets that modality replaced by noise
TONES = np.array([330.0, 440.0, 587.0, 740.0, 988.0, 1245.0])  # six pitches; classes are ordered pairs


def _class_motifs() -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(len(TONES)) for b in range(len(TONES)) if a != b]
    rng = np.random.default_rng(1234)  # fixed: the motif of a class never depends on the seed
    picked = rng.choice(len(pairs), size=10, replace=False)
    return [pairs[i] for i in picked]


def synth_audio(label: int, rng: np.random.Generator, corrupt: bool) -> np.ndarray:
    n = int(SAMPLE_RATE * CLIP_SECONDS)
    noise = rng.normal(0.0, 1.0, n)
    if corrupt:
        return (0.3 * noise / np.abs(noise).max()).astype(np.float32)
    a, b = _class_motifs()[label]
    wave = np.zeros(n)
    t0 = rng.uniform(0.0, 0.25)  # start jitter
    for tone, start in ((a, t0), (b, t0 + rng.uniform(0.3, 0.4))):
        dur = rng.uniform(0.18, 0.3)
        f = TONES[tone] * rng.uniform(0.97, 1.03)
        i0, i1 = int(start * SAMPLE_RATE), min(n, int((start + dur) * SAMPLE_RATE))
        t = np.arange(i1 - i0) / SAMPLE_RATE
        env = np.sin(np.pi * np.arange(i1 - i0) / max(1, i1 - i0))  # smooth on/off
        wave[i0:i1] += env * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t))
    snr_db = rng.uniform(-6.0, 12.0)
    sig_power = np.mean(wave[wave != 0] ** 2) if np.any(wave) else 1.0
    wave += noise * np.sqrt(sig_power / 10 ** (snr_db / 10))
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def synth_video(image: np.ndarray, rng: np.random.Generator, corrupt: bool) -> np.ndarray:
    """[FPS * CLIP_SECONDS, FRAME_SIZE, FRAME_SIZE, 3] uint8: a digit drifting over noise."""
    n_frames = int(FPS * CLIP_SECONDS)
    frames = rng.normal(0.35, 0.12, (n_frames, FRAME_SIZE, FRAME_SIZE))
    if not corrupt:
        scale = int(rng.integers(3, 5))  # 8x8 -> 24 or 32 px
        digit = np.kron(image / 16.0, np.ones((scale, scale)))
        size = digit.shape[0]
        start = rng.uniform(0, FRAME_SIZE - size, 2)
        end = rng.uniform(0, FRAME_SIZE - size, 2)
        contrast = rng.uniform(0.25, 0.6)
        for i in range(n_frames):
            y, x = (start + (end - start) * i / (n_frames - 1)).astype(int)
            frames[i, y : y + size, x : x + size] += contrast * digit
        frames += rng.normal(0, 0.1, frames.shape)
    tint = rng.uniform(0.7, 1.0, 3)
    rgb = np.clip(frames[..., None] * tint * 255, 0, 255)
    return rgb.astype(np.uint8)


def generate(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the demo into `root` (media/ and manifest.csv); return the manifest's path."""
    from sklearn.datasets import load_digits

    sizes = sizes or SPLIT_SIZES
    digits = load_digits()
    rng = np.random.default_rng(seed)
    # Each split draws its images from its own part of the digit set, so no image repeats across splits.
    order = rng.permutation(len(digits.target))
    parts = np.array_split(order, [int(0.6 * len(order)), int(0.75 * len(order))])
    pools = {
        split: {c: part[digits.target[part] == c] for c in range(10)}
        for split, part in zip(("train", "val", "test"), parts, strict=True)
    }
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in sizes.items():
        balanced = rng.permutation(np.arange(count) % 10)  # every class equally often
        for i in range(count):
            label = int(balanced[i])
            roll = rng.random()
            corrupt = "audio" if roll < CORRUPT_SHARE else "video" if roll < 2 * CORRUPT_SHARE else ""
            name = f"{split}_{i:05d}"
            write_audio(media / f"{name}.wav", synth_audio(label, rng, corrupt == "audio"), SAMPLE_RATE)
            image = digits.images[rng.choice(pools[split][label])]
            write_video(media / f"{name}.mp4", synth_video(image, rng, corrupt == "video"), FPS, codec="mpeg4")
            rows.append(
                {
                    "audio": f"media/{name}.wav",
                    "video": f"media/{name}.mp4",
                    "label": str(label),
                    "split": split,
                    "corrupted": corrupt,
                }
            )
    return write_manifest(root / "manifest.csv", rows)


def ensure_demo(seed: int = 0) -> Path:
    """The demo manifest for `seed`, generated into the cache on first use."""
    root = cache_root() / "datasets" / f"demo-v{DEMO_VERSION}-seed{seed}"
    manifest = root / "manifest.csv"
    if manifest.is_file():
        return manifest
    log.info("generating the demo dataset (seed %d) into %s", seed, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        generate(tmp, seed)
        try:
            os.replace(tmp, root)  # atomic: a half-written demo is never picked up
        except OSError:
            if not manifest.is_file():  # lost a race to another process: theirs is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
