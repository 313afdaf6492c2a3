"""Speech no one here recorded: digits spoken by espeak-ng in many voices, sent audio-only to the default model.

    python -m benchmarks.espeak_digits [--model models/default]

Synthesises "zero" ... "nine" with espeak-ng (Debian's package) in several English accents
and voice variants, starts a real `mla serve` on the model, posts each clip alone (audio
only) and scores the answers: accuracy per voice and overall, against chance (1 in 10)
with the binomial tail probability of doing that well by guessing, and the abstention the
service reports (coverage, accuracy among answered). Writes
benchmarks/results/espeak_digits.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.espeak_voices import ACCENTS, VARIANTS, WORDS
from benchmarks.live import start, stop
from benchmarks.report import markdown_table, write

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("espeak_digits")


def synthesise(
    folder: Path, accents: tuple[str, ...] = ACCENTS, variants: tuple[str, ...] = VARIANTS
) -> list[tuple[Path, int, str]]:
    """(wav, digit, voice) for every word in every voice; raises FileNotFoundError without espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (Debian package espeak-ng)")
    clips = []
    for accent, variant in itertools.product(accents, variants):
        voice = f"{accent}+{variant}"
        for digit, word in enumerate(WORDS):
            path = folder / f"{voice.replace('+', '_')}_{digit}.wav"
            subprocess.run([exe, "-v", voice, "-w", str(path), word], check=True, capture_output=True, timeout=30)
            clips.append((path, digit, voice))
    return clips


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely guessing does at least this well."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def ask(url: str, clips: list[tuple[Path, int, str]]) -> list[dict[str, Any]]:
    answers = []
    with httpx.Client(timeout=60) as client:
        for path, _, _ in clips:
            r = client.post(f"{url}/v1/predict", files={"audio": (path.name, path.read_bytes(), "audio/wav")})
            r.raise_for_status()
            answers.append(r.json())
    return answers


def score(clips: list[tuple[Path, int, str]], answers: list[dict[str, Any]]) -> dict[str, Any]:
    right = [a["label"] == str(d) for (_, d, _), a in zip(clips, answers, strict=True)]
    answered = [not a["abstained"] for a in answers]
    n, k = len(right), sum(right)
    voices: dict[str, list[bool]] = {}
    for (_, _, voice), ok in zip(clips, right, strict=True):
        voices.setdefault(voice, []).append(ok)
    kept = [ok for ok, ans in zip(right, answered, strict=True) if ans]
    return {
        "n": n,
        "accuracy": k / n,
        "chance": 1 / len(WORDS),
        "p_value_vs_chance": binomial_tail(n, k, 1 / len(WORDS)),
        "coverage": sum(answered) / n,
        "accuracy_among_answered": sum(kept) / len(kept) if kept else None,
        "by_voice": {v: sum(oks) / len(oks) for v, oks in voices.items()},
    }


def _answered(result: dict[str, Any]) -> str:
    """What the service did not abstain on, in words; none at all when the model's audio-alone threshold is 1."""
    if not result["coverage"]:
        return "the service abstained on every one of them (the model's audio-alone threshold; the label is still given)"
    return (
        f"the service answered (did not abstain on) {result['coverage']:.0%} of them, "
        f"with accuracy {result['accuracy_among_answered']:.3f} among those"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        clips = synthesise(Path(tmp))
        live = start(args.model, Path(tmp))
        try:
            t0 = time.perf_counter()
            answers = ask(live.url, clips)
            seconds = time.perf_counter() - t0
        finally:
            stop(live)
    result = score(clips, answers)
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    rows = [[v, a] for v, a in result["by_voice"].items()]
    md = (
        f"# Digits spoken by espeak-ng, audio only, to the default model\n\n"
        f"{result['n']} clips ({len(ACCENTS)} accents x {len(VARIANTS)} voice variants x 10 words; {espeak}): accuracy "
        f"**{result['accuracy']:.3f}** against chance {result['chance']:.2f} (probability of doing as well by guessing: "
        f"{result['p_value_vs_chance']:.1e}); {_answered(result)}.\n\n" + markdown_table(["voice", "accuracy"], rows) + "\n"
    )
    write("espeak_digits", {"espeak": espeak, "seconds": seconds, **result}, md)
    print(md)


if __name__ == "__main__":
    main()
