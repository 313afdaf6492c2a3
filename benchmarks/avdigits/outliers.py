"""Auxiliary outliers for outlier exposure: speech that is not a digit, for training only (issue 27).

    python -m benchmarks.avdigits.outliers [OUT_DIR] [--seed 0] [--count 1500] [--clean]   # no OUT_DIR: the cache

`mla train --outliers csv:PATH` reads the csv this writes (one `audio` column, a path per row) and
trains the model's output on these clips towards the uniform distribution (Hendrycks et al. 2019,
"Deep Anomaly Detection with Outlier Exposure"), beside the usual loss on the digits.

Each clip is a word, or two, from OUTLIER_WORDS spoken by espeak-ng in a voice drawn as AV-digits'
synthetic training voices are (accent, variant, pitch, speed: benchmarks.avdigits.build), and every
clip is recorded as AV-digits' training clips are (8 kHz, white noise at an SNR drawn from -5 to
20 dB), so the only thing that tells these from the training split's synthetic digits is what is
said. Version 1 left half of them at 16 kHz and clean; no training digit is clean, so a clean
recording became a cue for "not a digit" and the default model trained on them (version 4) flagged
clean recordings of real digits as out of distribution (docs/decisions/2026-12-06-outlier-exposure.md).

Nothing here is in the OOD benchmark's sets (benchmarks.ood.sets), the tune sets included:
OUTLIER_WORDS shares no word with their word and sentence lists, no word is a letter's name, and a
test checks both. So the tune sets still measure what a detector does on speech it never met, and
the report sets what it does on kinds no choice has seen.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.avdigits.build import SAMPLE_RATE, SYNTH_ACCENTS, SYNTH_PITCH, SYNTH_SPEED, _noisy, synthetic_variants
from common.media import decode_audio
from training.data.files import built_once, cache_root, write_manifest
from training.data.writers import write_audio

VERSION = 2  # of the recipe: a change to the words, the voices or the noise bumps it
# No digit, no word that sounds like one or rhymes with one (hero, free, tree, sticks, heaven, wine,
# line, fine, hive, gate, door, shoe, ...), no letter's name (bee, sea, tea, why, you, ...), nothing in the
# OOD sets' lists (tests/benchmarks/test_ood.py checks it).
OUTLIER_WORDS = (
    "bottle", "camera", "dragon", "elbow", "feather", "giant", "hammer", "igloo", "jungle", "kettle",
    "lemon", "magnet", "napkin", "ocean", "parrot", "puzzle", "rocket", "saddle", "tiger", "umbrella",
    "violin", "walrus", "zebra", "anchor", "blanket", "cactus", "dolphin", "falcon", "glove", "helmet",
    "insect", "jelly", "koala", "ladder", "monkey", "needle", "oyster", "pepper", "rainbow", "spider",
    "tomato", "valley", "wallet", "yogurt", "bridge", "castle", "desert", "tunnel", "planet", "mountain",
    "purple", "amber", "black", "white", "pink", "scarlet", "golden", "crimson", "olive", "grey",
    "run", "jump", "sing", "laugh", "swim", "climb", "write", "read", "cook", "sleep",
    "listen", "follow", "carry", "build", "paint", "dance", "travel", "whisper", "borrow", "answer",
    "hello", "goodbye", "thanks", "sorry", "maybe", "never", "always", "under", "over", "behind",
    "little", "big", "small", "cold", "warm", "bright", "dark", "soft", "loud", "slow",
    "butter", "cheese", "bread", "coffee", "sugar", "salad", "noodle", "pizza", "biscuit", "cherry",
    "lamp", "clock", "mirror", "pillow", "carpet", "bucket", "button", "ribbon", "pocket", "shovel",
)  # fmt: skip
COUNT = 1500  # as many as AV-digits' synthetic digit clips (150 per digit)


def _utterance(rng: np.random.Generator) -> str:
    """One word, or two (a third of the time), from OUTLIER_WORDS."""
    n = 2 if rng.random() < 1 / 3 else 1
    return " ".join(OUTLIER_WORDS[i] for i in rng.choice(len(OUTLIER_WORDS), n, replace=False))


def _say(text: str, voice: str, pitch: int, speed: int, folder: Path) -> Path:
    """`text` spoken by espeak-ng into folder/said.wav (its own 22.05 kHz)."""
    path = folder / "said.wav"
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    return path


def build(out: Path, seed: int = 0, count: int = COUNT, clean: bool = False) -> Path:
    """Write media/NNNN.wav and outliers.csv into `out`; return the csv. Its columns: audio, words, voice,
    condition (no column may be named after another kind: it would be read as one). `clean`: no noise added (8 kHz
    as recorded), for a probe that must not take "clean" for "not a digit"
    (docs/decisions/2026-12-07-clean-speech-probe.md)."""
    variants = synthetic_variants()  # fails before writing anything when espeak-ng is absent
    rng = np.random.default_rng([seed, 27])
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            text = _utterance(rng)
            voice = f"{SYNTH_ACCENTS[rng.integers(len(SYNTH_ACCENTS))]}+{variants[rng.integers(len(variants))]}"
            pitch, speed = int(rng.integers(*SYNTH_PITCH, endpoint=True)), int(rng.integers(*SYNTH_SPEED, endpoint=True))
            said = _say(text, voice, pitch, speed, Path(tmp))
            if clean:
                wave, condition = decode_audio(said, SAMPLE_RATE), "8 kHz, clean"
            else:
                wave, snr = _noisy(decode_audio(said, SAMPLE_RATE), rng, clean=False)  # as AV-digits' training clips
                condition = f"8 kHz, SNR {snr:.1f} dB"
            path = media / f"{i:04d}.wav"
            write_audio(path, np.asarray(wave, np.float32), SAMPLE_RATE)
            rows.append(
                {"audio": f"media/{path.name}", "words": text, "voice": f"{voice} p{pitch} s{speed}", "condition": condition}
            )
    return write_manifest(out / "outliers.csv", rows)


def cached(seed: int = 0, count: int = COUNT, clean: bool = False) -> Path:
    """The outliers' csv in the cache (`MLA_CACHE_DIR`), built on first use into a temporary folder moved
    into place when complete (an interrupted build is never mistaken for a finished one)."""
    out = cache_root() / "datasets" / f"avdigits-outliers-v{VERSION}{'-clean' if clean else ''}-seed{seed}-n{count}"
    return built_once(out, "outliers.csv", lambda folder: build(folder, seed, count, clean), f"{count} auxiliary outliers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="where to write them (default: the cache, built once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=COUNT, help=f"clips (default {COUNT})")
    parser.add_argument("--clean", action="store_true", help="no noise added: the words as espeak-ng says them, at 8 kHz")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(build(args.out, args.seed, args.count, args.clean) if args.out else cached(args.seed, args.count, args.clean))
    except FileNotFoundError as exc:
        raise SystemExit(f"cannot build the outliers: {exc}") from exc


if __name__ == "__main__":
    main()
