"""The voice's probe fitted with a clean half in each class: the decision (issue 27).

    python -m benchmarks.ood.clean_probe [--model models/default/7] [--resamples 2000]

The rule is docs/decisions/2026-12-07-clean-speech-probe.md's, written before any figure here was computed. The
base is the model's served voice detector (kNN and the probe version 7 serves). The candidate keeps the kNN and
fits its probe again (training.ood.fit_probe) with inliers = the training split's features and the four training
speakers' clean FSDD recordings, outliers = the noised auxiliary outliers and the same recipe's clean ones. Each
detector's scores are standardised on validation, its threshold keeps 95% of validation. Selection data only: the
validation split and speaker (jackson), the tune sets, clean letter names spoken here (the tune set's words, in
voices drawn as its are, 8 kHz, no noise). Neither the test split nor any report set is read.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.avdigits import build as avdigits
from benchmarks.avdigits import outliers as aux
from benchmarks.ood import sets
from benchmarks.ood.probe import (
    _ci,
    _Features,
    _ood,
    _paths,
    _standard,
    flagged_shares,
    paired_auroc,
    rule_lines,
    shown,
    voice_cells,
)
from benchmarks.report import markdown_table, write
from training.data.writers import write_audio

log = logging.getLogger("clean_probe")
ROOT = Path(__file__).resolve().parents[2]
CLEAN_GAIN = 0.05  # rule 1: clean letter names against clean validation speech, AUROC rises by at least this
NOISED_ALLOWED = 0.02  # rule 2: the tune set's (noised) letter names, AUROC at most this much lower
MEAN_ALLOWED = 0.01  # rule 3: the voice's tune cells, mean AUROC at most this much lower
CLEAN_FLAGGED_ALLOWED = 0.05  # rule 4: jackson's clean digits flagged, upper end of the rise below this
CLEAN_LETTERS = 50  # as many as the tune set's noised letter names


def clean_letters(folder: Path, seed: int) -> list[Path]:
    """The tune set's letter names spoken clean: its words, voices drawn as its are, 8 kHz, no noise added."""
    rng = np.random.default_rng([seed, 28])
    texts = [sets.LETTERS[i % len(sets.LETTERS)] for i in range(CLEAN_LETTERS)]
    paths = []
    for i, wave in enumerate(sets._speak(texts, rng, clean=True)):
        paths.append(folder / f"letter{i:02d}.wav")
        write_audio(paths[-1], np.asarray(wave, np.float32), avdigits.SAMPLE_RATE)
    return paths


def _csv_audio(path: Path) -> list[Path]:
    with path.open(newline="") as f:
        return [path.parent / r["audio"] for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default" / "7", help="the version decided on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=None, help="where to write (default benchmarks/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.detectors import fit_probe

    started = time.perf_counter()
    feats = _Features(args.model)
    served = feats.model.detectors["audio"]
    knn = served.knn
    id_csv = avdigits.cached(0)
    val = {m: feats(m, _paths(id_csv, "val", m)) for m in ("audio", "video")}
    recs = avdigits.recordings(avdigits.SHARED)
    train_speakers = sorted({r.speaker for r in recs} - {avdigits.SPEAKERS_VAL, avdigits.SPEAKER_TEST})
    clean_train = feats("audio", [r.path for r in recs if r.speaker in train_speakers])
    clean_val = feats("audio", [r.path for r in recs if r.speaker == avdigits.SPEAKERS_VAL])
    noised_out = feats("audio", _csv_audio(aux.cached()))
    clean_out = feats("audio", _csv_audio(aux.cached(clean=True)))
    tune_feats, distance, _ = _ood(feats, "tune", args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        letters = feats("audio", clean_letters(Path(tmp), args.seed))
    log.info("features in %.0f s", time.perf_counter() - started)

    probe, about = fit_probe(np.concatenate([knn.bank, clean_train]), np.concatenate([noised_out, clean_out]), args.seed)
    z_knn = _standard(knn.score(val["audio"]))
    z_probe = _standard(probe.score(val["audio"]))

    def candidate(x: np.ndarray) -> np.ndarray:
        return np.minimum(z_knn(knn.score(x)), z_probe(probe.score(x)))

    audio = {"knn": served.score, "candidate": candidate}  # "knn" here: the base, version 7's served detector
    cells = voice_cells(audio, val, val, tune_feats, distance, feats.model.detectors["video"].knn, args.seed, args.resamples)
    base_clean, cand_clean, clean_diff = paired_auroc(
        served.score(clean_val), served.score(letters), candidate(clean_val), candidate(letters), args.seed, args.resamples
    )
    flagged = flagged_shares(audio, val["audio"], clean_val, args.seed, args.resamples)
    flag_diff = flagged["difference"]
    mean_base = float(np.mean([c["knn"] for c in cells.values()]))
    mean_cand = float(np.mean([c["candidate"] for c in cells.values()]))
    noised = cells["audio / near"]
    clauses = {
        "clean letter names vs clean validation: rises >= 0.05, interval above 0": bool(
            clean_diff[0] >= CLEAN_GAIN and clean_diff[1] > 0
        ),
        "noised letter names vs validation: at most 0.02 lower": bool(noised["difference"][0] >= -NOISED_ALLOWED),
        "the voice's tune cells: mean at most 0.01 lower": bool(mean_cand >= mean_base - MEAN_ALLOWED),
        "jackson's clean digits flagged: upper end of the rise < 5 points": bool(flag_diff[2] < CLEAN_FLAGGED_ALLOWED),
    }
    data = {
        "model": shown(args.model),
        "probe": about,
        "n": {
            "inliers": len(knn.bank) + len(clean_train),
            "outliers": len(noised_out) + len(clean_out),
            "clean_letters": len(letters),
            "clean_val": len(clean_val),
        },
        "clean_near": {"base": base_clean, "candidate": cand_clean, "difference": clean_diff},
        "cells": cells,
        "mean": {"base": mean_base, "candidate": mean_cand},
        "clean_flagged": {"base": flagged["knn"], "candidate": flagged["candidate"], "difference": flag_diff},
        "clauses": clauses,
        "adopted": all(clauses.values()),
        "resamples": args.resamples,
        "seconds": time.perf_counter() - started,
    }
    paths = write("ood_clean_probe", data, markdown(data), *([args.results] if args.results else []))
    log.info("wrote %s", ", ".join(map(str, paths)))
    return data


def markdown(data: Mapping[str, Any]) -> str:
    near = data["clean_near"]
    rows = [
        [
            "clean letter names vs jackson's clean recordings",
            data["n"]["clean_letters"],
            f"{near['base']:.3f}",
            f"{near['candidate']:.3f}",
            _ci(near["difference"]),
        ]
    ]
    rows += [
        [cell, c["n_ood"], f"{c['knn']:.3f}", f"{c['candidate']:.3f}", _ci(c["difference"])] for cell, c in data["cells"].items()
    ]
    flagged = data["clean_flagged"]
    return "\n".join(
        [
            "# The voice's probe with a clean half in each class: the decision (issue 27)",
            "",
            f"`python -m benchmarks.ood.clean_probe` on `{data['model']}`. The rule:"
            " `docs/decisions/2026-12-07-clean-speech-probe.md`, written before any figure here. Selection data only.",
            "",
            f"The candidate's probe: {data['probe']}; inliers {data['n']['inliers']} (the training split and the training"
            f" speakers' clean recordings), outliers {data['n']['outliers']} (noised and clean).",
            "",
            "## AUROC: version 7's detector, the candidate, the paired difference and its 95% interval",
            "",
            markdown_table(["tune cell", "OOD items", "version 7", "candidate", "difference"], rows),
            "",
            f"Mean over the voice's tune cells: version 7 {data['mean']['base']:.3f}, candidate {data['mean']['candidate']:.3f}.",
            "",
            f"Jackson's {data['n']['clean_val']} clean recordings flagged: version 7 {flagged['base']:.1%}, candidate"
            f" {flagged['candidate']:.1%}; difference {_ci(flagged['difference'])}.",
            "",
            *rule_lines(data),
        ]
    )


if __name__ == "__main__":
    main()
