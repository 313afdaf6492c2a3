"""Each clip's own mean log-mel subtracted (`--set audio.cmn=true`) or not: decided on out-of-fold speakers.

    python -m benchmarks.avdigits.speaker_mean [--base runs/crossfit] [--candidate runs/crossfit-cmn]
        [--base-run runs/default-last] [--candidate-run runs/default-cmn]

The rule is docs/decisions/2026-12-07-speaker-mean.md's, written before any figure. Its evidence: the out-of-fold
predictions of two sets of cross-fitting folds trained by the same recipe but for the change (`python -m
training.crossfit`, each fold predicting the training speaker it never heard), scored as served and compared clip by
clip (benchmarks.avdigits.last_epoch's comparison and its first three clauses); and, for the fourth, the kNN
detector's mean AUROC on the OOD tune sets against validation, of each main run (`benchmarks.ood.features`, whose
results are written under each run's folder and only that figure read). The test split is never read.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.avdigits.last_epoch import clause_lines, compare, decide, group_sizes, rel, table
from benchmarks.report import write
from training.calibrate import load_out_of_fold, out_of_fold_speakers
from training.evaluate import Predictions

log = logging.getLogger("speaker_mean")
ROOT = Path(__file__).resolve().parents[2]
BASE, CANDIDATE = "version 6", "cmn"
TUNE_ALLOWED = 0.01  # the fourth clause: how far the kNN mean tune AUROC may fall


def out_of_fold(folder: Path) -> tuple[Predictions, np.ndarray]:
    return load_out_of_fold(folder, ["audio", "video"])[0], out_of_fold_speakers(folder)


def tune_auroc(run: Path) -> float:
    """The kNN detector's mean AUROC over the OOD tune cells against validation (benchmarks.ood.features' own choice
    of k on the same tune sets); its results go under the run's folder, and nothing else of them is read."""
    from benchmarks.ood import features

    data = features.main(["--run", str(run)], results=run / "ood-features")
    return float(data["choice"]["mean"]["knn"])


def markdown(data: dict[str, Any]) -> str:
    tune = data["tune_auroc"]
    verdict = "adopted" if data["decision"]["adopted"] else "not adopted"
    return (
        "#### Each clip's mean log-mel subtracted, or not (out-of-fold speakers)\n\n"
        f"Folds `{data['base']}` (version 6's recipe) and `{data['candidate']}` (the same with `--set audio.cmn=true`): "
        f"{', '.join(f'{g} ({n})' for g, n in data['groups'].items())}, each predicted by a model that never heard the "
        "speaker. Scored as served (every fitted layer fitted leave-one-speaker-out). Change: cmn minus version 6, 95% "
        f"bootstrap interval ({data['resamples']} resamples within speakers, seed {data['seed']}).\n\n"
        + table(data["subsets"], BASE, CANDIDATE)
        + f"\n\nkNN mean tune AUROC against validation (main runs): version 6 {tune[BASE]:.3f}, cmn {tune[CANDIDATE]:.3f}."
        + f"\n\nThe rule (docs/decisions/2026-12-07-speaker-mean.md): **{verdict}**.\n\n{clause_lines(data['decision'])}\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=ROOT / "runs" / "crossfit")
    parser.add_argument("--candidate", type=Path, default=ROOT / "runs" / "crossfit-cmn")
    parser.add_argument("--base-run", type=Path, default=ROOT / "runs" / "default-last")
    parser.add_argument("--candidate-run", type=Path, default=ROOT / "runs" / "default-cmn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    (base, groups), (candidate, cand_groups) = out_of_fold(args.base), out_of_fold(args.candidate)
    if not (np.array_equal(groups, cand_groups) and np.array_equal(base.labels, candidate.labels)):
        raise SystemExit("the two sets of folds did not predict the same clips in the same order")
    cells = compare({BASE: base, CANDIDATE: candidate}, groups, args.seed, args.resamples, BASE, CANDIDATE)
    decision = decide(cells)
    tune = {BASE: tune_auroc(args.base_run), CANDIDATE: tune_auroc(args.candidate_run)}
    decision["clauses"][f"kNN mean tune AUROC no more than {TUNE_ALLOWED} lower"] = tune[CANDIDATE] >= tune[BASE] - TUNE_ALLOWED
    decision["adopted"] = all(decision["clauses"].values())
    data: dict[str, Any] = {
        "base": rel(args.base),
        "candidate": rel(args.candidate),
        "runs": {BASE: rel(args.base_run), CANDIDATE: rel(args.candidate_run)},
        "groups": group_sizes(groups),
        "seed": args.seed,
        "resamples": args.resamples,
        "subsets": cells,
        "tune_auroc": tune,
        "decision": decision,
        "seconds": time.perf_counter() - started,
    }
    text = markdown(data)
    write("speaker_mean", data, text)
    print(text)
    return data


if __name__ == "__main__":
    main()
