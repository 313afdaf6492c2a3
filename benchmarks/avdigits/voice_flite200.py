"""Twice as many flite clips in training (200 per digit, not 100), or not: decided on out-of-fold speakers.

    python -m benchmarks.avdigits.voice_flite200 [--base runs/crossfit-flite] [--candidate runs/crossfit-flite200]
        [--base-run runs/default-flite] [--candidate-run runs/default-flite200]

The rule is docs/decisions/2026-12-08-more-flite-clips.md's, written before any figure; its evidence and scoring are
benchmarks.avdigits.recipe_change's, with the voice alone the subset whose NLL must fall. The test split is never
read.
"""

from __future__ import annotations

from benchmarks.avdigits.recipe_change import VERSION_9, Change
from benchmarks.avdigits.recipe_change import main as compare_recipes

CHANGE = Change(
    name="voice_flite200",
    label="200 flite clips",
    title="Twice as many flite clips in training, or not (out-of-fold speakers)",
    option="build --flite-voices 200",
    record="2026-12-08-more-flite-clips.md",
    target="audio",
    candidate="crossfit-flite200",
    candidate_run="default-flite200",
    base=VERSION_9,
)


if __name__ == "__main__":
    compare_recipes(CHANGE, doc=__doc__)
