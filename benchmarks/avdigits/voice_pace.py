"""Each training clip's pace changed at random (`--augment-set audio.stretch=0.1`) or not: decided on out-of-fold
speakers.

    python -m benchmarks.avdigits.voice_pace [--base runs/crossfit-video] [--candidate runs/crossfit-stretch]
        [--base-run runs/default-video] [--candidate-run runs/default-stretch]

The rule is docs/decisions/2026-12-07-voice-pace.md's, written before any figure; its evidence and scoring are
benchmarks.avdigits.recipe_change's, with the voice alone the subset whose NLL must fall. The test split is never
read.
"""

from __future__ import annotations

from benchmarks.avdigits.recipe_change import VERSION_8, Change
from benchmarks.avdigits.recipe_change import main as compare_recipes

CHANGE = Change(
    name="voice_pace",
    label="pace changed",
    title="Each training clip's pace changed at random, or not (out-of-fold speakers)",
    option="--augment-set audio.stretch=0.1",
    record="2026-12-07-voice-pace.md",
    target="audio",
    candidate="crossfit-stretch",
    candidate_run="default-stretch",
    base=VERSION_8,
)


if __name__ == "__main__":
    compare_recipes(CHANGE, doc=__doc__)
