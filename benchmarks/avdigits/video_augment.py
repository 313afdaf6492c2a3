"""The video's frames moved, turned and sheared in training (`--augment video`) or not: decided on out-of-fold
speakers.

    python -m benchmarks.avdigits.video_augment [--base runs/crossfit] [--candidate runs/crossfit-video]
        [--base-run runs/default-last] [--candidate-run runs/default-video]

The rule is docs/decisions/2026-12-07-video-augmentation.md's, written before any figure; its evidence and scoring
are benchmarks.avdigits.recipe_change's, with video the subset whose NLL must fall. The test split is never read.
"""

from __future__ import annotations

from benchmarks.avdigits.recipe_change import Change
from benchmarks.avdigits.recipe_change import main as compare_recipes

CHANGE = Change(
    name="video_augment",
    label="video augmented",
    title="The video's frames augmented in training, or not (out-of-fold speakers)",
    option="--augment video",
    record="2026-12-07-video-augmentation.md",
    target="video",
    candidate="crossfit-video",
    candidate_run="default-video",
)


if __name__ == "__main__":
    compare_recipes(CHANGE, doc=__doc__)
