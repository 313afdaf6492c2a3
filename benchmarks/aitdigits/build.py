"""Build AIT-digits from ../shared/data: a spoken digit, a handwritten one and the digit written in words.

    python -m benchmarks.aitdigits.build [OUT_DIR] [--seed 0] [--modalities image,text]

Each sample is one FSDD recording (audio), one MNIST drawing of the same digit (a PNG image) and
the digit's name as a UTF-8 text file, in one of eight languages, as people type it. Splits are
AV-digits' (benchmarks.avdigits.build): four speakers train, `jackson` validates, `theo` is held out
for test; every drawing is used once and the drawings are disjoint between splits.

Corruption recipe (seeded; the manifest records it per sample), so that each modality is sometimes
the one to trust and sometimes useless:
- audio: white noise at an SNR drawn uniformly from [-5, 20] dB (AV-digits' recipe);
- image: 30% of the drawings damaged, half by an occluding grey block over 60% x 60% of the digit,
  half by a Gaussian blur (sigma 2.5 px; AV-digits' recipe without the drift);
- text: the word in a random language (English, French, German, Spanish, Italian, Portuguese,
  Dutch, Swedish), in lower, Title or UPPER case, with typing errors (a Poisson number, mean 0.8, of
  a dropped, doubled, swapped or neighbouring-key letter, or a lost accent); 30% of the texts are
  damaged beyond that: half garbled (each letter replaced by a random one with probability 0.5),
  half cut to their first two letters (two, three; four, five; six, seven share theirs);
- missing: 10% of the training rows lack one of the three, drawn uniformly (validation and test are
  complete: the evaluation leaves modalities out itself).

`--modalities image,text` writes (and prints) a manifest of those columns only, the same rows:
the image-text set. The default writes all three.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.avdigits.build import (
    SAMPLE_RATE,
    SHARED,
    SPEAKER_TEST,
    SPEAKERS_VAL,
    MissingSharedDataError,
    _noisy,
    gaussian_blur,
    mnist,
    recordings,
)
from common.media import decode_audio
from training.data.files import cache_root
from training.data.writers import write_audio

log = logging.getLogger(__name__)
VERSION = 1  # of the recipe: a change bumps it, so a cached build is never mistaken for the new one
MODALITIES = ("audio", "image", "text")
IMAGE_CORRUPT_SHARE = TEXT_CORRUPT_SHARE = 0.3
MISSING_SHARE = 0.1  # of the training rows
TYPOS_MEAN = 0.8

# The digits 0-9 in eight languages, as their speakers write them.
NUMBERS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "it": ("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"),
    "pt": ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"),
    "nl": ("nul", "een", "twee", "drie", "vier", "vijf", "zes", "zeven", "acht", "negen"),
    "sv": ("noll", "ett", "två", "tre", "fyra", "fem", "sex", "sju", "åtta", "nio"),
}
# Letters next to each other on a QWERTY keyboard: the usual slip of a finger.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
NEIGHBOURS = {c: "".join(r[j] for j in (i - 1, i + 1) if 0 <= j < len(r)) for r in _ROWS for i, c in enumerate(r)}
PLAIN = str.maketrans("éèêëüöäåàâçñóúíôõã", "eeeeuoaaaacnouioo" + "a")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typo(word: str, rng: np.random.Generator) -> str:
    """One typing error: a letter dropped, doubled, swapped with the next, struck as its neighbour, or an accent lost."""
    kind = int(rng.integers(5))
    if kind == 4 and word != word.translate(PLAIN):
        return word.translate(PLAIN)
    if len(word) < 2:
        return word + word
    i = int(rng.integers(len(word) - 1))
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[: i + 1] + word[i:]
    if kind == 2:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    near = NEIGHBOURS.get(word[i].lower(), "")
    return word[:i] + (near[int(rng.integers(len(near)))] if near else word[i]) + word[i + 1 :]


def written(digit: int, rng: np.random.Generator) -> tuple[str, str, str]:
    """The digit as someone types it: (text, language, damage: "", "garbled" or "cut")."""
    language = list(NUMBERS)[int(rng.integers(len(NUMBERS)))]
    word = NUMBERS[language][digit]
    for _ in range(int(rng.poisson(TYPOS_MEAN))):
        word = typo(word, rng)
    roll = rng.random()
    damage = "" if roll >= TEXT_CORRUPT_SHARE else "garbled" if roll < TEXT_CORRUPT_SHARE / 2 else "cut"
    if damage == "garbled":
        word = "".join(LETTERS[int(rng.integers(26))] if rng.random() < 0.5 else c for c in word)
    elif damage == "cut":
        word = word[:2]
    case = rng.random()
    word = word.upper() if case < 0.15 else word.title() if case < 0.4 else word
    return word, language, damage


def drawing(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The 28 x 28 MNIST drawing, damaged as the recipe says: (uint8 image, damage)."""
    roll = rng.random()
    damage = "" if roll >= IMAGE_CORRUPT_SHARE else "occlusion" if roll < IMAGE_CORRUPT_SHARE / 2 else "blur"
    img = image.astype(np.float64)
    if damage == "blur":
        img = gaussian_blur(img, 2.5)
    elif damage == "occlusion":
        h = int(0.6 * 28)
        y, x = rng.integers(0, 28 - h + 1, 2)
        img[y : y + h, x : x + h] = 128
    return np.clip(img, 0, 255).astype(np.uint8), damage


def build(out: Path, seed: int = 0, root: Path = SHARED, limit_per_speaker_digit: int | None = None) -> Path:
    """Write media/ and manifest.csv (audio, image, text) and manifest-image-text.csv into `out`; return manifest.csv."""
    recs = recordings(root)
    images, labels = mnist(root)
    rng = np.random.default_rng([seed, 3])  # a stream of its own: AV-digits' draws are not these
    split_of = {s: "train" for s in {r.speaker for r in recs}}
    split_of[SPEAKERS_VAL], split_of[SPEAKER_TEST] = "val", "test"
    if limit_per_speaker_digit is not None:  # a small version, for tests
        counts: dict[tuple[str, int], int] = {}
        kept = []
        for r in recs:
            counts[(r.speaker, r.digit)] = counts.get((r.speaker, r.digit), 0) + 1
            if counts[(r.speaker, r.digit)] <= limit_per_speaker_digit:
                kept.append(r)
        recs = kept
    pools: dict[int, list[int]] = {d: list(rng.permutation(np.flatnonzero(labels == d))) for d in range(10)}
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(recs):
        split = split_of[r.speaker]
        if not pools[r.digit]:
            raise ValueError(f"digit {r.digit}: more recordings than MNIST drawings")
        index = int(pools[r.digit].pop())  # each drawing once: disjoint between splits
        name = f"{i:05d}_{r.path.stem}"
        noisy, snr = _noisy(decode_audio(r.path, SAMPLE_RATE), rng, clean=False)
        picture, image_damage = drawing(images[index], rng)
        text, language, text_damage = written(r.digit, rng)
        missing = ""
        if split == "train" and rng.random() < MISSING_SHARE:
            missing = MODALITIES[int(rng.integers(len(MODALITIES)))]
        write_audio(media / f"{name}.wav", noisy.astype(np.float32), SAMPLE_RATE)
        Image.fromarray(picture, mode="L").save(media / f"{name}.png", optimize=False)
        (media / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
        files = {"audio": f"media/{name}.wav", "image": f"media/{name}.png", "text": f"media/{name}.txt"}
        rows.append(
            {
                **{m: ("" if m == missing else files[m]) for m in MODALITIES},
                "label": str(r.digit),
                "split": split,
                "speaker": r.speaker,
                "drawing": index,
                "language": language,
                "snr_db": round(snr, 2),
                "image_damage": image_damage,
                "text_damage": text_damage,
                "missing": missing,
            }
        )
    write_rows(out / "manifest.csv", rows, MODALITIES)
    write_rows(out / "manifest-image-text.csv", rows, ("image", "text"))
    return out / "manifest.csv"


def write_rows(path: Path, rows: list[dict[str, Any]], modalities: tuple[str, ...]) -> Path:
    """The rows with `modalities` as the modality columns (a row left with none of them is dropped)."""
    drop = [m for m in MODALITIES if m not in modalities]
    kept = [{k: v for k, v in r.items() if k not in drop} for r in rows if any(r[m] for m in modalities)]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)
    return path


def manifest_for(folder: Path, modalities: tuple[str, ...]) -> Path:
    return folder / ("manifest.csv" if set(modalities) == set(MODALITIES) else f"manifest-{'-'.join(modalities)}.csv")


def cached(seed: int = 0, modalities: tuple[str, ...] = MODALITIES) -> Path:
    """The manifest in the cache (`MLA_CACHE_DIR`), built on first use. Raises MissingSharedDataError without
    ../shared/data."""
    out = cache_root() / "datasets" / f"aitdigits-v{VERSION}-seed{seed}"
    path = manifest_for(out, modalities)
    if not path.is_file():
        log.info("building AIT-digits into %s", out)
        build(out, seed)
    if not path.is_file():
        raise ValueError(f"no AIT-digits manifest for {','.join(modalities)}: choose all three or image,text")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="where to write it (default: the cache, built once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N recordings per speaker and digit")
    parser.add_argument("--modalities", default=",".join(MODALITIES), help="audio,image,text (default) or image,text")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    modalities = tuple(m.strip() for m in args.modalities.split(","))
    if set(modalities) not in ({*MODALITIES}, {"image", "text"}):
        parser.error("--modalities takes audio,image,text or image,text")
    try:
        if args.out:
            print(manifest_for(args.out, modalities) if build(args.out, args.seed, limit_per_speaker_digit=args.limit) else "")
        else:
            if args.limit is not None:
                parser.error("--limit needs OUT_DIR (the cache holds the whole set)")
            print(cached(args.seed, modalities))
    except MissingSharedDataError as exc:
        raise SystemExit(f"cannot build AIT-digits: {exc}; the shared data sets belong in {SHARED}") from exc


if __name__ == "__main__":
    main()
