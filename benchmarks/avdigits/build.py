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

`--synthetic-voices N` adds N clips per digit to the training split only, each spoken by
espeak-ng in a voice drawn at random (an English accent, a voice variant, a pitch and a
speed; never the variants `make bench-espeak` tests with), with the same noise recipe and a
fresh clip of one of the training split's images: more voices than four speakers give, for
`benchmarks.avdigits.audio_voices`. `--flite-voices N` adds N more per digit spoken by flite, a second synthesiser
(a diphone voice and three statistical voices built from recorded speakers), each in one of its voices at a random
pace and, where the voice takes it, pitch (`docs/decisions/2026-12-07-flite-voices.md`). Each synthesiser draws from
a random stream of its own, so the rows before its rows are the same with it or without it. Validation and test are
the same either way.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.espeak_voices import VARIANTS as BENCH_VARIANTS
from benchmarks.espeak_voices import WORDS
from common.media import decode_audio
from training.data.files import cache_root, write_manifest
from training.data.writers import write_audio, write_video

log = logging.getLogger(__name__)
SHARED = Path(os.environ.get("MLA_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
SPEAKERS_VAL = "jackson"
SPEAKER_TEST = "theo"
SAMPLE_RATE = 8000
FPS, FRAMES, SIZE = 8, 8, 64
VIDEO_CORRUPT_SHARE = 0.3
SNR_RANGE = (-5.0, 20.0)
SYNTH_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
SYNTH_PITCH, SYNTH_SPEED = (15, 85), (110, 200)  # espeak-ng -p (0-99) and -s (words per minute)
# flite's English voices (awb_time speaks only clock times): kal and kal16 are diphone voices that take a mean pitch
# in Hz; awb, rms and slt are clustergen voices that take a pitch factor (rms's model ignores it). The pace is
# flite's duration_stretch, the same range for all.
FLITE_DIPHONE_VOICES = ("kal", "kal16")
FLITE_VOICES = (*FLITE_DIPHONE_VOICES, "awb", "rms", "slt")
FLITE_DIPHONE_F0, FLITE_F0_SHIFT, FLITE_STRETCH = (85.0, 160.0), (0.8, 1.25), (0.8, 1.25)


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


def _noisy(wave: np.ndarray, rng: np.random.Generator, clean: bool) -> tuple[np.ndarray, float]:
    """White noise at an SNR drawn from SNR_RANGE (unless `clean`), peak-normalised to 0.9; and the SNR."""
    snr = float(rng.uniform(*SNR_RANGE))
    power = float(np.mean(wave**2)) or 1e-8
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), wave.shape)  # drawn either way: the same seed stream
    noisy = wave if clean else wave + noise
    return 0.9 * noisy / max(1e-6, float(np.abs(noisy).max())), snr


def _corruption(roll: float, clean: bool) -> str:
    """The video damage for a uniform draw: none, occlusion or blur (VIDEO_CORRUPT_SHARE of clips, half each)."""
    if roll >= VIDEO_CORRUPT_SHARE or clean:
        return ""
    return "occlusion" if roll < VIDEO_CORRUPT_SHARE / 2 else "blur"


def _write_sample(
    where: tuple[Path, str],
    wave: np.ndarray,
    frames: np.ndarray,
    digit: int,
    split: str,
    speaker: str,
    image: int,
    snr: float | None,
    corrupt: str,
) -> dict[str, Any]:
    """Write MEDIA/NAME.wav and MEDIA/NAME.mp4 (`where` = (MEDIA, NAME)); return the sample's manifest row."""
    media, name = where
    write_audio(media / f"{name}.wav", wave.astype(np.float32), SAMPLE_RATE)
    write_video(media / f"{name}.mp4", frames, FPS, codec="mpeg4")
    return {
        "audio": f"media/{name}.wav",
        "video": f"media/{name}.mp4",
        "label": str(digit),
        "split": split,
        "speaker": speaker,
        "drawing": image,  # the MNIST row drawn (a column named "image" would be read as an image modality)
        "snr_db": "" if snr is None else round(snr, 2),
        "video_corruption": corrupt,
    }


def synthetic_variants() -> list[str]:
    """espeak-ng's voice variants on this machine, less those `make bench-espeak` tests with; sorted."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (Debian package espeak-ng); --synthetic-voices needs it")
    listing = subprocess.run([exe, "--voices=variant"], check=True, capture_output=True, text=True, timeout=30).stdout
    files = [line.split()[4] for line in listing.splitlines()[1:] if len(line.split()) >= 5]
    return sorted({f.split("/", 1)[1] for f in files if f.startswith("!v/")} - set(BENCH_VARIANTS))


def speak(word: str, voice: str, pitch: int, speed: int, folder: Path) -> np.ndarray:
    """`word` spoken by espeak-ng, decoded (PyAV) at SAMPLE_RATE."""
    path = folder / "word.wav"
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), word]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    return decode_audio(path, SAMPLE_RATE)


def flite_speak(word: str, voice: str, stretch: float, pitch: float, folder: Path) -> np.ndarray:
    """`word` spoken by flite in `voice` at pace `stretch` and pitch `pitch` (Hz for the diphone voices, a factor
    for the others), decoded (PyAV) at SAMPLE_RATE."""
    path = folder / "word.wav"
    f0 = ["--setf", f"int_f0_target_mean={pitch:.1f}" if voice in FLITE_DIPHONE_VOICES else f"f0_shift={pitch:.3f}"]
    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}", *f0, "-t", word, "-o", str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    return decode_audio(path, SAMPLE_RATE)


def build(
    out: Path,
    seed: int = 0,
    root: Path = SHARED,
    limit_per_speaker_digit: int | None = None,
    clean: bool = False,
    synthetic_per_digit: int = 0,
    flite_per_digit: int = 0,
) -> Path:
    """Write media/ and manifest.csv into `out`; return the manifest's path.

    `clean`: no corruption at all (the recordings as they are, undamaged digits), for the
    robustness benchmark, which adds its own at controlled severities.
    `synthetic_per_digit`: that many espeak-ng clips per digit added to the training split
    (from a random stream of their own: the FSDD rows are the same with or without them).
    `flite_per_digit`: that many flite clips per digit after those, from a third stream.
    """
    variants = synthetic_variants() if synthetic_per_digit else []  # fail before writing anything
    if flite_per_digit and shutil.which("flite") is None:
        raise FileNotFoundError("flite is not installed (Debian package flite); --flite-voices needs it")
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
    train_images: dict[int, list[int]] = {}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        need = {s: sum(1 for r in recs if r.digit == digit and split_of[r.speaker] == s) for s in ("train", "val", "test")}
        if sum(need.values()) > len(idx):
            raise ValueError(f"digit {digit}: {sum(need.values())} recordings but {len(idx)} images")
        train_images[digit] = list(idx[: need["train"]])
        cut = np.cumsum([need["train"], need["val"]])
        for s, part in zip(("train", "val", "test"), np.split(idx, cut), strict=True):
            pools[(s, digit)] = list(part[: need[s]])
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, r in enumerate(recs):
        split = split_of[r.speaker]
        image_index = int(pools[(split, r.digit)].pop())
        noisy, snr = _noisy(decode_audio(r.path, SAMPLE_RATE), rng, clean)
        corrupt = _corruption(rng.random(), clean)
        frames = digit_clip(images[image_index], rng, corrupt)
        where = (media, f"{i:05d}_{r.path.stem}")
        rows.append(_write_sample(where, noisy, frames, r.digit, split, r.speaker, image_index, None if clean else snr, corrupt))

    def spoken(where: tuple[Path, str], wave: np.ndarray, digit: int, speaker: str, rng: np.random.Generator) -> dict[str, Any]:
        """A synthetic training row: `wave` noised as the recordings are, beside a new clip of one of the training
        split's drawings of `digit`, every draw from `rng` (its synthesiser's own stream)."""
        noisy, snr = _noisy(wave, rng, clean)
        image_index = int(rng.choice(train_images[digit]))
        corrupt = _corruption(rng.random(), clean)
        frames = digit_clip(images[image_index], rng, corrupt)
        return _write_sample(where, noisy, frames, digit, "train", speaker, image_index, None if clean else snr, corrupt)

    synth = np.random.default_rng([seed, 1])
    with tempfile.TemporaryDirectory() as tmp:
        for digit, word in enumerate(WORDS if synthetic_per_digit else ()):
            for j in range(synthetic_per_digit):
                voice = f"{SYNTH_ACCENTS[synth.integers(len(SYNTH_ACCENTS))]}+{variants[synth.integers(len(variants))]}"
                pitch, speed = int(synth.integers(*SYNTH_PITCH, endpoint=True)), int(synth.integers(*SYNTH_SPEED, endpoint=True))
                wave = speak(word, voice, pitch, speed, Path(tmp))
                speaker = f"espeak-ng {voice} p{pitch} s{speed}"
                rows.append(spoken((media, f"synth_{digit}_{j:04d}"), wave, digit, speaker, synth))
        other = np.random.default_rng([seed, 2])
        for digit, word in enumerate(WORDS if flite_per_digit else ()):
            for j in range(flite_per_digit):
                voice = FLITE_VOICES[other.integers(len(FLITE_VOICES))]
                stretch = float(other.uniform(*FLITE_STRETCH))
                f0 = float(other.uniform(*(FLITE_DIPHONE_F0 if voice in FLITE_DIPHONE_VOICES else FLITE_F0_SHIFT)))
                wave = flite_speak(word, voice, stretch, f0, Path(tmp))
                speaker = f"flite {voice} d{stretch:.2f} f{f0:.2f}"
                rows.append(spoken((media, f"flite_{digit}_{j:04d}"), wave, digit, speaker, other))
    return write_manifest(out / "manifest.csv", rows)


def _rename_drawing_column(manifest: Path) -> None:
    """A manifest cached before 2026-12-06 called its MNIST row `image`, now a modality's name: renamed in place."""
    if not manifest.is_file():
        return
    text = manifest.read_text(encoding="utf-8")
    header, _, rest = text.partition("\n")
    columns = header.split(",")
    if "image" in columns and "drawing" not in columns:
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(",".join("drawing" if c == "image" else c for c in columns) + "\n" + rest, encoding="utf-8")
        os.replace(tmp, manifest)


def cached(seed: int = 0, synthetic_per_digit: int = 0, flite_per_digit: int = 0) -> Path:
    """The AV-digits manifest in the cache (`MLA_CACHE_DIR`), built on first use; what the benchmarks and
    the default model train on (`synthetic_per_digit` 0). Raises MissingSharedDataError without ../shared/data."""
    name = f"avdigits-v2-seed{seed}" + (f"-espeak{synthetic_per_digit}" if synthetic_per_digit else "")
    name += f"-flite{flite_per_digit}" if flite_per_digit else ""
    out = cache_root() / "datasets" / name
    manifest = out / "manifest.csv"
    _rename_drawing_column(manifest)
    if not manifest.is_file():
        log.info("building AV-digits into %s", out)
        build(out, seed, synthetic_per_digit=synthetic_per_digit, flite_per_digit=flite_per_digit)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="where to write it (default: the cache, built once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-voices", type=int, default=0, metavar="N", help="espeak-ng clips per digit, training only")
    parser.add_argument("--flite-voices", type=int, default=0, metavar="N", help="flite clips per digit, training only")
    args = parser.parse_args()
    for flag, value in (("--synthetic-voices", args.synthetic_voices), ("--flite-voices", args.flite_voices)):
        if value < 0:
            parser.error(f"{flag} must not be negative")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    n, f = args.synthetic_voices, args.flite_voices
    try:
        print(build(args.out, args.seed, synthetic_per_digit=n, flite_per_digit=f) if args.out else cached(args.seed, n, f))
    except MissingSharedDataError as exc:
        raise SystemExit(f"cannot build AV-digits: {exc}; the shared data sets belong in {SHARED}") from exc
    except FileNotFoundError as exc:
        raise SystemExit(f"cannot build AV-digits: {exc}") from exc


if __name__ == "__main__":
    main()
