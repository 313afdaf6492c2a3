"""Build the AV-digits dataset from ../shared/data: one FSDD recording + one MNIST image per sample.

    python -m benchmarks.avdigits.build [OUT_DIR] [--seed 0]     # no OUT_DIR: into the cache, once; prints the manifest

Splits are disjoint by speaker and by image: four speakers train, one validates, one is
held out for test (`theo`, by default); every image is used once. Written as real media
(8 kHz wav, 1 s MPEG-4 mp4 of the digit drifting slightly) plus a `csv:` manifest.

Corruption recipe (seeded, the same for every split; the manifest records it per sample):
- audio: white noise added to every recording at an SNR drawn uniformly from [-5, 20] dB,
  so some recordings are clean and some barely audible;
- video: 30% of the clips are corrupted, half of those by an occluding grey block over a
  random 60% x 60% of the digit, half by a Gaussian blur (sigma 2.5 px);
so that the easy modality (the image) is sometimes useless and the per-sample weights
matter.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.media import decode_audio
from training.data.specs import cache_root, write_manifest
from training.data.writers import write_audio, write_video

log = logging.getLogger(__name__)
SHARED = Path(os.environ.get("MLA_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
SPEAKERS_VAL = "jackson"
SPEAKER_TEST = "theo"
SAMPLE_RATE = 8000
FPS, FRAMES, SIZE = 8, 8, 64
VIDEO_CORRUPT_SHARE = 0.3
SNR_RANGE = (-5.0, 20.0)


class MissingSharedDataError(Exception):
    pass


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str


def recordings(root: Path) -> list[Recording]:
    folder = root / "fsdd" / "recordings"
    if not folder.is_dir():
        raise MissingSharedDataError(f"{folder} is absent")
    out = []
    for p in sorted(folder.glob("*.wav")):
        digit, speaker, _ = p.stem.split("_")
        out.append(Recording(p, int(digit), speaker))
    return out


def mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    path = root / "mnist" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MissingSharedDataError(f"{path} is absent")
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(3 * sigma)
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(image.astype(np.float64), radius, mode="edge")
    rows = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, rows)


def digit_clip(image: np.ndarray, rng: np.random.Generator, corrupt: str) -> np.ndarray:
    """[FRAMES, SIZE, SIZE, 3] uint8: the digit at 2x, drifting a few pixels, on black."""
    img = image.astype(np.float64)
    if corrupt == "blur":
        img = gaussian_blur(img, 2.5)
    elif corrupt == "occlusion":
        h = w = int(0.6 * 28)
        y, x = rng.integers(0, 28 - h + 1, 2)
        img = img.copy()
        img[y : y + h, x : x + w] = 128
    big = np.kron(img, np.ones((2, 2)))
    start, end = rng.integers(0, SIZE - 56 + 1, 2), rng.integers(0, SIZE - 56 + 1, 2)
    frames = np.zeros((FRAMES, SIZE, SIZE))
    for i in range(FRAMES):
        y, x = (start + (end - start) * i / (FRAMES - 1)).astype(int)
        frames[i, y : y + 56, x : x + 56] = big
    return np.repeat(np.clip(frames, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def build(out: Path, seed: int = 0, root: Path = SHARED, limit_per_speaker_digit: int | None = None, clean: bool = False) -> Path:
    """Write media/ and manifest.csv into `out`; return the manifest's path.

    `clean`: no corruption at all (the recordings as they are, undamaged digits), for the
    robustness benchmark, which adds its own at controlled severities.
    """
    recs = recordings(root)
    images, labels = mnist(root)
    rng = np.random.default_rng(seed)
    split_of = {s: "train" for s in {r.speaker for r in recs}}
    split_of[SPEAKERS_VAL], split_of[SPEAKER_TEST] = "val", "test"
    if limit_per_speaker_digit is not None:  # a small version, for tests
        counts: dict[tuple[str, int], int] = {}
        small = []
        for r in recs:
            counts[(r.speaker, r.digit)] = counts.get((r.speaker, r.digit), 0) + 1
            if counts[(r.speaker, r.digit)] <= limit_per_speaker_digit:
                small.append(r)
        recs = small
    # disjoint image pools per split and digit
    pools: dict[tuple[str, int], list[int]] = {}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        need = {s: sum(1 for r in recs if r.digit == digit and split_of[r.speaker] == s) for s in ("train", "val", "test")}
        if sum(need.values()) > len(idx):
            raise ValueError(f"digit {digit}: {sum(need.values())} recordings but {len(idx)} images")
        cut = np.cumsum([need["train"], need["val"]])
        for s, part in zip(("train", "val", "test"), np.split(idx, cut), strict=True):
            pools[(s, digit)] = list(part[: need[s]])
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, r in enumerate(recs):
        split = split_of[r.speaker]
        image_index = int(pools[(split, r.digit)].pop())
        wave = decode_audio(r.path, SAMPLE_RATE)
        snr = float(rng.uniform(*SNR_RANGE))
        power = float(np.mean(wave**2)) or 1e-8
        noise = rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), wave.shape)  # drawn either way: the same seed stream
        noisy = wave if clean else wave + noise
        noisy = 0.9 * noisy / max(1e-6, float(np.abs(noisy).max()))
        roll = rng.random()
        corrupt = "" if roll >= VIDEO_CORRUPT_SHARE or clean else ("occlusion" if roll < VIDEO_CORRUPT_SHARE / 2 else "blur")
        name = f"{i:05d}_{r.path.stem}"
        write_audio(media / f"{name}.wav", noisy.astype(np.float32), SAMPLE_RATE)
        write_video(media / f"{name}.mp4", digit_clip(images[image_index], rng, corrupt), FPS, codec="mpeg4")
        rows.append(
            {
                "audio": f"media/{name}.wav",
                "video": f"media/{name}.mp4",
                "label": str(r.digit),
                "split": split,
                "speaker": r.speaker,
                "image": image_index,
                "snr_db": "" if clean else round(snr, 2),
                "video_corruption": corrupt,
            }
        )
    return write_manifest(out / "manifest.csv", rows)


def cached(seed: int = 0) -> Path:
    """The AV-digits manifest in the cache (`MLA_CACHE_DIR`), built on first use; what the benchmarks and
    the default model train on. Raises MissingSharedDataError without ../shared/data."""
    out = cache_root() / "datasets" / f"avdigits-v2-seed{seed}"
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        log.info("building AV-digits into %s", out)
        build(out, seed)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="where to write it (default: the cache, built once)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(build(args.out, args.seed) if args.out else cached(args.seed))
    except MissingSharedDataError as exc:
        raise SystemExit(f"cannot build AV-digits: {exc}; the shared data sets belong in {SHARED}") from exc


if __name__ == "__main__":
    main()
