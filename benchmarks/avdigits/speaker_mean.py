"""Each clip's own mean log-mel subtracted (`--set audio.cmn=true`) or not: decided on out-of-fold speakers.

    python -m benchmarks.avdigits.speaker_mean [--base runs/crossfit] [--candidate runs/crossfit-cmn]
        [--base-run runs/default-last] [--candidate-run runs/default-cmn]

The rule is docs/decisions/2026-12-07-speaker-mean.md's, written before any figure; its evidence and scoring are
benchmarks.avdigits.recipe_change's. The test split is never read.
"""

from __future__ import annotations

from benchmarks.avdigits.recipe_change import Change
from benchmarks.avdigits.recipe_change import main as compare_recipes

CHANGE = Change(
    name="speaker_mean",
    label="cmn",
    title="Each clip's mean log-mel subtracted, or not (out-of-fold speakers)",
    option="--set audio.cmn=true",
    record="2026-12-07-speaker-mean.md",
    target="audio",
    candidate="crossfit-cmn",
    candidate_run="default-cmn",
)


if __name__ == "__main__":
    compare_recipes(CHANGE, doc=__doc__)
