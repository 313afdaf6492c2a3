"""A digit-or-not linear probe beside the voice's kNN detector: the decision on the tune sets (issue 27).

    python -m benchmarks.ood.probe [--model models/default/6] [--resamples 2000]

The rule is docs/decisions/2026-12-07-outlier-probe.md's, written before any figure here was computed. Everything
read is selection data: the served model's graphs and kNN bank, the training split (the bank's rows), the
auxiliary outliers (benchmarks.avdigits.outliers), the validation split, the OOD tune sets and the validation
speaker's clean FSDD recordings. Neither the test split nor any report set is read.

The candidate: a logistic regression on the voice's L2-normalised penultimate features, training split against
the outliers (training.ood.fit_probe); the voice's score is the lower of the kNN's and the probe's scores, each
standardised by its mean and standard deviation on validation. A pair's score is the lower of its modalities'
standardised scores, as benchmarks.ood.features scores pairs. Thresholds keep 95% of validation.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.avdigits import build as avdigits
from benchmarks.avdigits import outliers as aux
from benchmarks.ood import metrics, sets
from benchmarks.ood.run import Model
from benchmarks.report import markdown_table, write
from common.manifest import newest_version
from common.ood import TPR, threshold_at_tpr

log = logging.getLogger("probe")
ROOT = Path(__file__).resolve().parents[2]
NEAR_GAIN = 0.05  # rule 1: the voice's tune-near AUROC rises by at least this, interval above 0
CLEAN_ALLOWED = 0.05  # rule 3: the upper end of the clean-speech flagged difference stays below this


def _paths(manifest_csv: Path, split: str, column: str) -> list[Path]:
    with manifest_csv.open(newline="") as f:
        return [manifest_csv.parent / r[column] for r in csv.DictReader(f) if r["split"] == split]


def shown(path: Path) -> str:
    """A path as the report shows it: relative to the project where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _standard(val: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mean, std = float(val.mean()), float(val.std())
    return lambda s: (np.asarray(s, np.float64) - mean) / max(std, 1e-12)


def paired_auroc(id_a: np.ndarray, ood_a: np.ndarray, id_b: np.ndarray, ood_b: np.ndarray, seed: int, resamples: int):
    """AUROC of a and of b on the same items, and the 95% percentile interval of b - a (ID and OOD items resampled
    separately, the same draw for both detectors)."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(id_a), (resamples, len(id_a)))
    o = rng.integers(0, len(ood_a), (resamples, len(ood_a)))
    diff = metrics._auroc_rank(id_b[i], ood_b[o]) - metrics._auroc_rank(id_a[i], ood_a[o])
    a, b = metrics.auroc(id_a, ood_a), metrics.auroc(id_b, ood_b)
    return a, b, [b - a, float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))]


def flagged_shares(
    scorers: Mapping[str, Callable[[np.ndarray], np.ndarray]], val: np.ndarray, clean: np.ndarray, seed: int, resamples: int
) -> dict[str, Any]:
    """Clean speech: the share of `clean` that each scorer ("knn", "candidate") flags at its threshold keeping TPR of
    `val`, and the difference candidate minus knn with its 95% paired bootstrap interval (clips resampled)."""
    flagged = {name: score(clean) < threshold_at_tpr(score(val), TPR) for name, score in scorers.items()}
    d = flagged["candidate"].astype(float) - flagged["knn"].astype(float)
    boot = d[np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    return {
        "knn": float(flagged["knn"].mean()),
        "candidate": float(flagged["candidate"].mean()),
        "difference": [float(d.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
    }


def voice_cells(
    scorers: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    id_feats: Mapping[str, np.ndarray],
    val_feats: Mapping[str, np.ndarray],
    ood_feats: Mapping[str, np.ndarray],
    distance: Mapping[str, np.ndarray],
    video_knn: Any,
    seed: int,
    resamples: int,
    kinds: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Paired AUROC of two voice scorers ("knn" and "candidate") on the cells that hold the voice: audio alone, audio
    OOD beside an in-distribution video (random partner), both OOD (near with near, far with far, as
    benchmarks.ood.run pairs them). A pair's score is the lower of its modalities' scores, each standardised by its
    validation mean and sd. `kinds` (the audio items' kinds) adds a row per near kind for audio alone."""
    rng = np.random.default_rng([seed, 27])
    z_video = _standard(video_knn.score(val_feats["video"]))
    partner = rng.integers(0, len(id_feats["video"]), len(ood_feats["audio"]))
    both = {}
    for d in ("near", "far"):
        a = rng.permutation(np.flatnonzero(distance["audio"] == d))
        v = rng.permutation(np.flatnonzero(distance["video"] == d))
        n = min(len(a), len(v))
        both[d] = (a[:n], v[:n])
    id_video = z_video(video_knn.score(id_feats["video"]))
    cells: dict[str, dict[str, Any]] = {}
    masks = {f"{d}": distance["audio"] == d for d in ("near", "far")}
    for d in ("near", "far"):
        rows: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for name, score in scorers.items():
            z_a = _standard(score(val_feats["audio"]))
            s_id, s_ood = score(id_feats["audio"]), score(ood_feats["audio"][masks[d]])
            pair_id = np.minimum(z_a(s_id), id_video)
            pair_ood = np.minimum(z_a(s_ood), z_video(video_knn.score(id_feats["video"][partner[masks[d]]])))
            ai, vi = both[d]
            both_ood = np.minimum(z_a(score(ood_feats["audio"][ai])), z_video(video_knn.score(ood_feats["video"][vi])))
            rows[name] = {"audio": (s_id, s_ood), "audio OOD, video ID": (pair_id, pair_ood), "both OOD": (pair_id, both_ood)}
            if kinds is not None and d == "near":
                for kind in dict.fromkeys(kinds[masks[d]]):
                    rows[name][f"audio: {kind}"] = (s_id, score(ood_feats["audio"][kinds == kind]))
        for cond in rows["knn"]:
            (ia, oa), (ib, ob) = rows["knn"][cond], rows["candidate"][cond]
            a_, b_, diff = paired_auroc(ia, oa, ib, ob, seed, resamples)
            name = cond if cond.startswith("audio: ") else f"{cond} / {d}"
            cells[name] = {"n_ood": len(oa), "knn": a_, "candidate": b_, "difference": diff}
    return cells


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="default: version 6 (the decision), the newest (--report)")
    parser.add_argument(
        "--report",
        action="store_true",
        help="after publishing: the served probe against its kNN alone on the report sets and the test split",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=None, help="where to write (default benchmarks/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return report(args) if args.report else decide(args)


class _Features:
    """The model's graphs run on files: each modality's features."""

    def __init__(self, folder: Path) -> None:
        self.model = Model(folder)

    def __call__(self, modality: str, paths: list[Path]) -> np.ndarray:
        d = self.model.run(modality, paths)
        if d.refused:
            raise SystemExit(f"refused: {d.refused}")
        return d.logits[:, self.model.classes :]


def _ood(feats: _Features, group: str, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    items = [it for it in sets.read_items(sets.cached(seed)) if it.group == group]
    per = {m: [it for it in items if it.modality == m] for m in ("audio", "video")}
    distance = {m: np.array([it.distance for it in v]) for m, v in per.items()}
    return {m: feats(m, [it.path for it in v]) for m, v in per.items()}, distance, np.array([it.kind for it in per["audio"]])


def decide(args: argparse.Namespace) -> dict[str, Any]:
    """The decision record's rule, on version 6's graphs: selection data only."""
    from training.detectors import fit_probe

    started = time.perf_counter()
    folder = args.model or ROOT / "models" / "default" / "6"
    feats = _Features(folder)
    knn = feats.model.detectors["audio"].knn
    id_csv = avdigits.cached(0)
    outlier_csv = aux.cached()
    val = {m: feats(m, _paths(id_csv, "val", m)) for m in ("audio", "video")}
    with outlier_csv.open(newline="") as f:
        outlier_feats = feats("audio", [outlier_csv.parent / r["audio"] for r in csv.DictReader(f)])
    tune_feats, distance, _ = _ood(feats, "tune", args.seed)
    clean = [r for r in avdigits.recordings(avdigits.SHARED) if r.speaker == avdigits.SPEAKERS_VAL]
    clean_feats = feats("audio", [r.path for r in clean])
    log.info("features in %.0f s", time.perf_counter() - started)

    probe, about = fit_probe(knn.bank, outlier_feats, seed=args.seed)
    z_knn = _standard(knn.score(val["audio"]))
    z_probe = _standard(probe.score(val["audio"]))

    def candidate(x: np.ndarray) -> np.ndarray:
        return np.minimum(z_knn(knn.score(x)), z_probe(probe.score(x)))

    audio = {"knn": knn.score, "candidate": candidate}
    cells = voice_cells(audio, val, val, tune_feats, distance, feats.model.detectors["video"].knn, args.seed, args.resamples)

    flagged = flagged_shares(audio, val["audio"], clean_feats, args.seed, args.resamples)
    clean_diff = flagged["difference"]
    clean_result = {"speaker": avdigits.SPEAKERS_VAL, "n": len(clean), **flagged}
    near = cells["audio / near"]["difference"]
    mean_knn = float(np.mean([c["knn"] for c in cells.values()]))
    mean_cand = float(np.mean([c["candidate"] for c in cells.values()]))
    clauses = {
        "tune near rises by >= 0.05, interval above 0": bool(near[0] >= NEAR_GAIN and near[1] > 0),
        "mean over the voice's tune cells not lower": bool(mean_cand >= mean_knn),
        "clean speech flagged: upper end of the rise < 5 points": bool(clean_diff[2] < CLEAN_ALLOWED),
    }
    data = {
        "model": shown(folder),
        "probe": about,
        "n": {"val": len(val["audio"]), "outliers": len(outlier_feats), "bank": len(knn.bank)},
        "cells": cells,
        "mean": {"knn": mean_knn, "candidate": mean_cand},
        "clean_speech": clean_result,
        "clauses": clauses,
        "adopted": all(clauses.values()),
        "resamples": args.resamples,
        "seconds": time.perf_counter() - started,
    }
    paths = write("ood_probe", data, markdown(data), *([args.results] if args.results else []))
    log.info("wrote %s", ", ".join(map(str, paths)))
    return data


def report(args: argparse.Namespace) -> dict[str, Any]:
    """After publishing, the probe's ablation: the served detector (kNN and probe) against its kNN alone, on the report
    sets against the test split, paired bootstrap intervals; and the clean recordings of the held-out speaker."""
    started = time.perf_counter()
    folder = args.model or newest_version(ROOT / "models" / "default")
    feats = _Features(folder)
    served = feats.model.detectors["audio"]
    if served.probe is None:
        raise SystemExit(f"{folder}: its voice's detector has no probe")
    id_csv = avdigits.cached(0)
    val = {m: feats(m, _paths(id_csv, "val", m)) for m in ("audio", "video")}
    test = {m: feats(m, _paths(id_csv, "test", m)) for m in ("audio", "video")}
    ood_feats, distance, kinds = _ood(feats, "report", args.seed)
    audio = {"knn": served.knn.score, "candidate": served.score}
    cells = voice_cells(
        audio, test, val, ood_feats, distance, feats.model.detectors["video"].knn, args.seed, args.resamples, kinds
    )
    data = {
        "model": shown(folder),
        "probe": served.probe and feats.model.manifest.ood["audio"].probe.fitted_on,  # type: ignore[index,union-attr]
        "cells": cells,
        "resamples": args.resamples,
        "seconds": time.perf_counter() - started,
    }
    paths = write("ood_probe_report", data, report_markdown(data), *([args.results] if args.results else []))
    log.info("wrote %s", ", ".join(map(str, paths)))
    return data


def report_markdown(data: Mapping[str, Any]) -> str:
    rows = [
        [cell, c["n_ood"], f"{c['knn']:.3f}", f"{c['candidate']:.3f}", _ci(c["difference"])] for cell, c in data["cells"].items()
    ]
    return "\n".join(
        [
            "# The voice's probe, removed: report sets against the test split (issue 27)",
            "",
            f"`python -m benchmarks.ood.probe --report` on `{data['model']}`, read after it was published. The served"
            " detector (kNN and probe) against its kNN alone, on the same items: AUROC, and the paired difference with its"
            " 95% bootstrap interval (in-distribution and OOD items resampled separately). A layer stays only where its"
            " removal loses with the whole interval below zero; here that reads as a difference wholly above zero.",
            "",
            markdown_table(["report cell", "OOD items", "kNN alone", "kNN and probe (served)", "difference"], rows),
            "",
            "The report's espeak-ng words and sentences share a synthesiser with the probe's outliers (not a word);"
            " GRID's sentences are real speech no part of the model met.",
        ]
    )


def _ci(v: list[float]) -> str:
    return f"{v[0]:+.3f} ({v[1]:+.3f} to {v[2]:+.3f})"


def markdown(data: Mapping[str, Any]) -> str:
    rows = [
        [cell, c["n_ood"], f"{c['knn']:.3f}", f"{c['candidate']:.3f}", _ci(c["difference"])] for cell, c in data["cells"].items()
    ]
    clean = data["clean_speech"]
    return "\n".join(
        [
            "# A digit-or-not probe beside the voice's kNN detector: the decision on the tune sets (issue 27)",
            "",
            f"`python -m benchmarks.ood.probe` on `{data['model']}`. The rule: `docs/decisions/2026-12-07-outlier-probe.md`,"
            " written before any figure here. Selection data only: validation against the OOD tune sets, and the"
            " validation speaker's clean recordings. No test-split or report-set figure is read.",
            "",
            f"The probe: {data['probe']}.",
            "",
            "## Tune AUROC against validation (kNN alone, with the probe, the paired difference and its 95% interval)",
            "",
            markdown_table(["tune cell", "OOD items", "kNN", "kNN and probe", "difference"], rows),
            "",
            f"Mean over the cells: kNN {data['mean']['knn']:.3f}, with the probe {data['mean']['candidate']:.3f}.",
            "",
            f"## Clean speech: {clean['speaker']}'s {clean['n']} FSDD recordings, no noise added, sent alone",
            "",
            f"Flagged out of distribution: kNN {clean['knn']:.1%}, with the probe {clean['candidate']:.1%};"
            f" difference {_ci(clean['difference'])}.",
            "",
            *rule_lines(data),
        ]
    )


def rule_lines(data: Mapping[str, Any]) -> list[str]:
    """A decision's clauses, whether each holds, and the outcome, as Markdown lines."""
    return [
        "## The rule",
        "",
        markdown_table(["clause", "holds"], [[k, "yes" if v else "**no**"] for k, v in data["clauses"].items()]),
        "",
        f"**Outcome: {'adopted' if data['adopted'] else 'not adopted'}.**",
    ]


if __name__ == "__main__":
    main()
