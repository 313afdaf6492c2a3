"""One change to the default model's recipe against the recipe as it is: decided on out-of-fold speakers.

The evidence of every such record (`docs/decisions/2026-12-07-speaker-mean.md`, `2026-12-07-video-augmentation.md`):
the out-of-fold predictions of two sets of cross-fitting folds trained by the same recipe but for the change
(`python -m training.crossfit`, each fold predicting the training speaker it never heard), scored as served and
compared clip by clip (benchmarks.avdigits.last_epoch's comparison and its first three clauses, the change's target
modality the one whose NLL must fall); and, for the fourth clause, the kNN detector's mean AUROC on the OOD tune sets
against validation, of each main run (`benchmarks.ood.features`, whose results are written under each run's folder
and only that figure read). The test split is never read.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.avdigits.last_epoch import clause_lines, compare, decide, group_sizes, rel, table
from benchmarks.report import write
from training.calibrate import load_out_of_fold, out_of_fold_speakers
from training.evaluate import Predictions

log = logging.getLogger("recipe_change")
ROOT = Path(__file__).resolve().parents[2]
TUNE_ALLOWED = 0.01  # the fourth clause: how far the kNN mean tune AUROC may fall


@dataclass(frozen=True)
class Base:
    """The recipe as it is: the published version trained by it and where its runs are."""

    label: str  # its name in the tables
    folds: str  # default folder of its folds, under runs/
    run: str  # default folder of its main run, under runs/


VERSION_6 = Base("version 6", "crossfit", "default-last")
VERSION_8 = Base("version 8", "crossfit-video", "default-video")
VERSION_9 = Base("version 9", "crossfit-flite", "default-flite")  # version 10 is its graphs, calibrated again


@dataclass(frozen=True)
class Change:
    name: str  # the results' file name under benchmarks/results
    label: str  # the candidate's name in the tables
    title: str  # the Markdown heading
    option: str  # what the candidate's recipe adds, as a user would type it
    record: str  # the decision record, under docs/decisions
    target: str  # the subset whose NLL the change must lower
    candidate: str  # default folder of the candidate's folds, under runs/
    candidate_run: str  # default folder of the candidate's main run, under runs/
    base: Base = VERSION_6  # what the change is compared against


def out_of_fold(folder: Path) -> tuple[Predictions, np.ndarray]:
    return load_out_of_fold(folder, ["audio", "video"])[0], out_of_fold_speakers(folder)


def tune_auroc(run: Path) -> float:
    """The kNN detector's mean AUROC over the OOD tune cells against validation (benchmarks.ood.features' own choice
    of k on the same tune sets); its results go under the run's folder, and nothing else of them is read."""
    from benchmarks.ood import features

    data = features.main(["--run", str(run)], results=run / "ood-features")
    return float(data["choice"]["mean"]["knn"])


def markdown(change: Change, data: dict[str, Any]) -> str:
    tune = data["tune_auroc"]
    verdict = "adopted" if data["decision"]["adopted"] else "not adopted"
    return (
        f"#### {change.title}\n\n"
        f"Folds `{data['base']}` ({change.base.label}'s recipe) and `{data['candidate']}` (the same with `{change.option}`): "
        f"{', '.join(f'{g} ({n})' for g, n in data['groups'].items())}, each predicted by a model that never heard the "
        "speaker. Scored as served (every fitted layer fitted leave-one-speaker-out). Change: "
        f"{change.label} minus {change.base.label}, 95% bootstrap interval ({data['resamples']} resamples within speakers, seed "
        f"{data['seed']}).\n\n"
        + table(data["subsets"], change.base.label, change.label)
        + "\n\nkNN mean tune AUROC against validation (main runs): "
        + f"{change.base.label} {tune[change.base.label]:.3f}, {change.label} {tune[change.label]:.3f}."
        + f"\n\nThe rule (docs/decisions/{change.record}): **{verdict}**.\n\n{clause_lines(data['decision'])}\n"
    )


def main(change: Change, argv: list[str] | None = None, doc: str | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=ROOT / "runs" / change.base.folds)
    parser.add_argument("--candidate", type=Path, default=ROOT / "runs" / change.candidate)
    parser.add_argument("--base-run", type=Path, default=ROOT / "runs" / change.base.run)
    parser.add_argument("--candidate-run", type=Path, default=ROOT / "runs" / change.candidate_run)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    (base, groups), (candidate, cand_groups) = out_of_fold(args.base), out_of_fold(args.candidate)
    if not (np.array_equal(groups, cand_groups) and np.array_equal(base.labels, candidate.labels)):
        raise SystemExit("the two sets of folds did not predict the same clips in the same order")
    base_label = change.base.label
    cells = compare({base_label: base, change.label: candidate}, groups, args.seed, args.resamples, base_label, change.label)
    decision = decide(cells, target=change.target)
    tune = {base_label: tune_auroc(args.base_run), change.label: tune_auroc(args.candidate_run)}
    decision["clauses"][f"kNN mean tune AUROC no more than {TUNE_ALLOWED} lower"] = (
        tune[change.label] >= tune[base_label] - TUNE_ALLOWED
    )
    decision["adopted"] = all(decision["clauses"].values())
    data: dict[str, Any] = {
        "base": rel(args.base),
        "candidate": rel(args.candidate),
        "runs": {base_label: rel(args.base_run), change.label: rel(args.candidate_run)},
        "groups": group_sizes(groups),
        "seed": args.seed,
        "resamples": args.resamples,
        "subsets": cells,
        "tune_auroc": tune,
        "decision": decision,
        "seconds": time.perf_counter() - started,
    }
    text = markdown(change, data)
    write(change.name, data, text)
    print(text)
    return data
