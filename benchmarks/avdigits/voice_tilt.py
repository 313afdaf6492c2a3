"""A random slope across each training clip's spectrum (`--augment-set audio.tilt=0.3`) or not: decided on out-of-fold
speakers.

    python -m benchmarks.avdigits.voice_tilt [--base runs/crossfit-video] [--candidate runs/crossfit-tilt]
        [--base-run runs/default-video] [--candidate-run runs/default-tilt]

The rule is docs/decisions/2026-12-07-voice-tilt.md's, written before any figure; its evidence and scoring are
benchmarks.avdigits.recipe_change's, with the voice alone the subset whose NLL must fall. The test split is never
read.
"""

from __future__ import annotations

from benchmarks.avdigits.recipe_change import VERSION_8, Change
from benchmarks.avdigits.recipe_change import main as compare_recipes

CHANGE = Change(
    name="voice_tilt",
    label="spectrum tilted",
    title="A random slope across each training clip's spectrum, or not (out-of-fold speakers)",
    option="--augment-set audio.tilt=0.3",
    record="2026-12-07-voice-tilt.md",
    target="audio",
    candidate="crossfit-tilt",
    candidate_run="default-tilt",
    base=VERSION_8,
)


if __name__ == "__main__":
    compare_recipes(CHANGE, doc=__doc__)
