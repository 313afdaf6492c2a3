"""A second synthesiser's voices in training (flite, 100 clips per digit) or not: decided on out-of-fold speakers.

    python -m benchmarks.avdigits.voice_flite [--base runs/crossfit-video] [--candidate runs/crossfit-flite]
        [--base-run runs/default-video] [--candidate-run runs/default-flite]

The rule is docs/decisions/2026-12-07-flite-voices.md's, written before any figure; its evidence and scoring are
benchmarks.avdigits.recipe_change's, with the voice alone the subset whose NLL must fall. The test split is never
read.
"""

from __future__ import annotations

from benchmarks.avdigits.recipe_change import VERSION_8, Change
from benchmarks.avdigits.recipe_change import main as compare_recipes

CHANGE = Change(
    name="voice_flite",
    label="flite voices",
    title="A second synthesiser's voices in training, or not (out-of-fold speakers)",
    option="build --flite-voices 100",
    record="2026-12-07-flite-voices.md",
    target="audio",
    candidate="crossfit-flite",
    candidate_run="default-flite",
    base=VERSION_8,
)


if __name__ == "__main__":
    compare_recipes(CHANGE, doc=__doc__)
