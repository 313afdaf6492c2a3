"""Which epoch of a run to serve: the best by the pair's validation accuracy, or the last; on out-of-fold speakers.

    python -m benchmarks.avdigits.last_epoch [--crossfit runs/crossfit-best] [--resamples 2000]

The folds must be trained keeping their best epoch (`mla train`'s default, the recipe of versions 3 to 5): a fold
that kept its last has no best epoch left to compare. `make default-model`'s recipe keeps the last now, so the
folds compared are trained by the same command without `--keep last`:

    python -m training.crossfit --data csv:MANIFEST --out runs/crossfit-best --parallel 2 -- \
        --method mla --seed 0 --epochs 30 --owm-alpha 10 --augment audio

The evidence (docs/decisions/2026-12-07-last-epoch.md, where the rule was written before any figure): the folds of
`python -m training.crossfit`, each trained without one training speaker and without their drawings. Each fold's
best epoch (its checkpoint.pt, chosen on the validation speaker) and its last epoch (its last.pt) predict the speaker
it never heard. Both sets of predictions are scored as the service scores them (benchmarks.avdigits.ablation's
`held_out_scores`: every fitted layer of the served rule fitted on three speakers, scored on the fourth). The figure
is the paired difference last minus best per clip, for NLL and accuracy, with a 95% percentile bootstrap interval
(clips resampled within each speaker). Neither the test split nor any OOD set is read.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.avdigits.ablation import _served, held_out_scores
from benchmarks.report import markdown_table, write
from training.calibrate import pool
from training.evaluate import Predictions

log = logging.getLogger("last_epoch")
ROOT = Path(__file__).resolve().parents[2]
# The rule of the decision record: how much accuracy the last epoch may lose (point estimate), per subset.
ACCURACY_ALLOWED = {"audio": 0.01, "video": 0.005, "audio+video": 0.005}


def fold_predictions(crossfit: Path) -> tuple[dict[str, Predictions], np.ndarray]:
    """Out-of-fold predictions of each fold's best and last epoch: {"best": ..., "last": ...}, and each clip's speaker."""
    import torch

    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.crossfit import fold_manifest
    from training.data.specs import parse_spec
    from training.evaluate import predict_split
    from training.train import checkpoint_of_last

    made = json.loads((crossfit / "oof.json").read_text())
    manifest = Path(made["data"].removeprefix("csv:")).resolve()
    torch.set_num_threads(2)
    parts: dict[str, list[Predictions]] = {"best": [], "last": []}
    speakers: list[np.ndarray] = []
    for speaker in made["folds"]:
        run, spec = crossfit / speaker, parse_spec(f"csv:{fold_manifest(manifest, speaker)}")
        best = load_checkpoint(run)
        if best["train_config"].get("keep", "best") != "best":
            raise SystemExit(f"{run} kept its last epoch (--keep last): the folds to compare must be trained keeping the best")
        for name, ckpt in (("best", best), ("last", checkpoint_of_last(run))):
            parts[name].append(predict_split(model_from_checkpoint(ckpt), spec, "test"))
            log.info("fold %s, %s epoch (%s): %d clips", speaker, name, ckpt["best_validation"], len(parts[name][-1].labels))
        speakers.append(np.array([speaker] * len(parts["best"][-1].labels)))
    return {name: functools.reduce(pool, ps) for name, ps in parts.items()}, np.concatenate(speakers)


def stratified_interval(diff: np.ndarray, groups: np.ndarray, seed: int, resamples: int) -> list[float]:
    """[mean, low, high] of the mean per-clip difference; 95% percentile bootstrap, clips resampled within each group."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    means = np.zeros(resamples)
    for rows in members:
        picks = rows[rng.integers(0, len(rows), (resamples, len(rows)))]
        means += diff[picks].sum(axis=1)
    means /= len(diff)
    return [float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def compare(
    preds: dict[str, Predictions], groups: np.ndarray, seed: int, resamples: int, base: str = "best", other: str = "last"
) -> dict[str, Any]:
    """Per subset sent: each set of predictions scored as served (leave one group out), and the paired change
    `other` minus `base` per clip in NLL and in accuracy, with its interval. Every modality's temperature is fitted,
    as the records that use this were scored (before version 10, whose export leaves a temperature that does not pay
    at 1): both sides alike, so the comparison is even."""
    scored = {name: held_out_scores(p, groups, _served(frozenset(p.modalities))) for name, p in preds.items()}
    out: dict[str, Any] = {}
    for sub in scored[base]:
        before, after = scored[base][sub], scored[other][sub]
        cell: dict[str, Any] = {"n": len(before["nll"])}
        for name, c in ((base, before), (other, after)):
            given = c["answered"]
            cell[name] = {
                "nll": float(c["nll"].mean()),
                "accuracy": float(c["right"].mean()),
                "answered": float(given.mean()),
                "error_among_answered": float(1 - c["right"][given].mean()) if given.any() else None,
            }
        cell["nll_change"] = stratified_interval(after["nll"] - before["nll"], groups, seed, resamples)
        cell["accuracy_change"] = stratified_interval(
            after["right"].astype(float) - before["right"].astype(float), groups, seed, resamples
        )
        out[sub] = cell
    return out


def decide(cells: dict[str, Any], target: str = "audio") -> dict[str, Any]:
    """The decision record's three clauses, each true or false, and whether the change is adopted: `target`'s NLL
    falls, the other subsets' does not rise, and accuracy stays within its allowance."""
    others = [s for s in ("audio+video", "video", "audio") if s != target]
    names = " and ".join("pair" if s == "audio+video" else s for s in others)
    clauses = {
        f"{target} NLL falls (interval wholly below 0)": cells[target]["nll_change"][2] < 0,
        f"{names} NLL do not rise (neither interval wholly above 0)": all(cells[s]["nll_change"][1] <= 0 for s in others),
        "accuracy within its allowance (pair, video 0.5 point; audio 1)": all(
            cells[s]["accuracy_change"][0] >= -allowed for s, allowed in ACCURACY_ALLOWED.items()
        ),
    }
    return {"clauses": clauses, "adopted": all(clauses.values())}


def table(cells: dict[str, Any], base: str = "best", other: str = "last") -> str:
    """The comparison's table: each subset's figures for `base` and `other`, and the paired changes."""
    rows = []
    for sub, c in cells.items():
        b, la = c[base], c[other]
        dn, da = c["nll_change"], c["accuracy_change"]
        rows.append(
            [
                sub,
                c["n"],
                f"{b['nll']:.3f} / {la['nll']:.3f}",
                f"{dn[0]:+.3f} ({dn[1]:+.3f} to {dn[2]:+.3f})",
                f"{b['accuracy']:.3f} / {la['accuracy']:.3f}",
                f"{100 * da[0]:+.1f} ({100 * da[1]:+.1f} to {100 * da[2]:+.1f})",
                f"{b['answered']:.1%} / {la['answered']:.1%}",
            ]
        )
    pair = f"{base} / {other}"
    header = ["sent", "n", f"NLL {pair}", "NLL change", f"accuracy {pair}", "accuracy change, points", f"answered {pair}"]
    return markdown_table(header, rows)


def clause_lines(decision: dict[str, Any]) -> str:
    return "\n".join(f"- {'holds' if ok else '**fails**'}: {name}" for name, ok in decision["clauses"].items())


def markdown(data: dict[str, Any]) -> str:
    clauses = clause_lines(data["decision"])
    verdict = "adopted" if data["decision"]["adopted"] else "not adopted"
    return (
        "#### The best epoch by the pair's validation accuracy, or the last (out-of-fold speakers)\n\n"
        f"Folds of `{data['crossfit']}`: {', '.join(f'{g} ({n})' for g, n in data['groups'].items())}, each predicted by a "
        "model that never heard the speaker. Scored as served (every fitted layer fitted leave-one-speaker-out). Change: "
        f"last minus best, 95% bootstrap interval ({data['resamples']} resamples within speakers, seed {data['seed']}).\n\n"
        + table(data["subsets"])
        + f"\n\nThe rule (docs/decisions/2026-12-07-last-epoch.md): **{verdict}**.\n\n{clauses}\n"
    )


def rel(path: Path) -> str:
    """`path` relative to the repository where it lies inside it, for results that read the same on every machine."""
    return str(path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path)


def group_sizes(groups: np.ndarray) -> dict[str, int]:
    return {str(g): int((groups == g).sum()) for g in dict.fromkeys(groups.tolist())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crossfit", type=Path, default=ROOT / "runs" / "crossfit-best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    preds, groups = fold_predictions(args.crossfit)
    cells = compare(preds, groups, args.seed, args.resamples)
    data: dict[str, Any] = {
        "crossfit": rel(args.crossfit),
        "groups": group_sizes(groups),
        "seed": args.seed,
        "resamples": args.resamples,
        "subsets": cells,
        "decision": decide(cells),
    }
    data["seconds"] = time.perf_counter() - started
    text = markdown(data)
    write("last_epoch", data, text)
    print(text)
    return data


if __name__ == "__main__":
    main()
