"""Calibration as a client sees it: AV-digits test pairs sent to a running `mla serve`.

    python -m benchmarks.avdigits.service_calibration [--model models/default]

Starts the real server (uvicorn, CPU provider) on a model exported from AV-digits (by
default the embedded default model), sends every test pair of the held-out speaker three
times (audio and video; audio only; video only), and scores the `confidence` the service
returns: accuracy, ECE (15 bins), adaptive ECE, NLL of the returned probabilities, and the
abstention it reports (coverage and the error rate among the answers it did not abstain
on). The manifest holds the validation ECE before and after calibration. Writes
benchmarks/results/service_calibration.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sklearn.model_selection import RepeatedKFold

from benchmarks.avdigits.build import cached as dataset
from benchmarks.live import start, stop
from benchmarks.report import markdown_table, write
from common import calibration
from common.fusion import softmax
from common.manifest import load_manifest
from service.model import resolve_version_dir
from training.calibrate import fit_temperature

ROOT = Path(__file__).resolve().parents[2]
SENDS = {"audio+video": ("audio", "video"), "audio": ("audio",), "video": ("video",)}
REFIT_FOLDS, REFIT_REPEATS = 2, 10
log = logging.getLogger("service_calibration")


async def send_all(url: str, rows: list[dict[str, str]], base: Path, concurrency: int = 4) -> dict[str, list[dict[str, Any]]]:
    """Every row under every subset; answers in row order."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, list[dict[str, Any]]] = {k: [{} for _ in rows] for k in SENDS}
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(key: str, i: int, row: dict[str, str]) -> None:
            files = {m: (Path(row[m]).name, (base / row[m]).read_bytes()) for m in SENDS[key]}
            async with sem:
                r = await client.post(f"{url}/v1/predict", files=files)
            r.raise_for_status()
            out[key][i] = r.json()

        await asyncio.gather(*(one(k, i, row) for k in SENDS for i, row in enumerate(rows)))
    return out


def figures(answers: list[dict[str, Any]], labels: list[str], truth: np.ndarray) -> dict[str, Any]:
    probs = np.array([[a["probabilities"][c] for c in labels] for a in answers])
    abstained = np.array([a["abstained"] for a in answers])
    correct = probs.argmax(1) == truth
    return {
        "n": float(len(truth)),
        "accuracy": float(correct.mean()),
        **calibration.summary(probs, truth),
        "coverage": float((~abstained).mean()),
        "risk_among_answered": float(1 - correct[~abstained].mean()) if (~abstained).any() else None,
        "refit_here": refit_here(probs, truth),
    }


def refit_here(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """A diagnosis, never served: how much of the ECE a temperature fitted on this split itself would remove.

    The returned probabilities are sharpened or flattened by one more temperature,
    softmax(log p / t), fitted on half of the clips and scored on the other half (2-fold,
    10 shuffles: sklearn's RepeatedKFold), so the figure is out of sample. Where it reaches
    its floor, what the served confidence lacks is the shift from the validation split to this
    one; where it does not, a temperature's shape cannot calibrate these answers even on the
    data it is fitted to. `temperature` is the one fitted on the whole split (1: the served
    confidence needs none).
    """
    log_p = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))
    splits = list(RepeatedKFold(n_splits=REFIT_FOLDS, n_repeats=REFIT_REPEATS, random_state=0).split(log_p))
    eces, floors = [], []
    for r in range(REFIT_REPEATS):
        out = np.empty_like(log_p)
        for fit, held in splits[r * REFIT_FOLDS : (r + 1) * REFIT_FOLDS]:
            out[held] = softmax(log_p[held] / fit_temperature(log_p[fit], truth[fit]))
        eces.append(calibration.ece(out, truth))
        floors.append(calibration.ece_floor(out))
    return {"temperature": fit_temperature(log_p, truth), "ece": float(np.mean(eces)), "ece_floor": float(np.mean(floors))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    manifest_csv = dataset()
    with manifest_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == args.split]
    manifest = load_manifest(resolve_version_dir(args.model, None))  # the version `mla serve` will serve
    labels = manifest.labels
    truth = np.array([labels.index(r["label"]) for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        live = start(args.model, Path(tmp))
        try:
            t0 = time.perf_counter()
            answers = asyncio.run(send_all(live.url, rows, manifest_csv.parent))
            seconds = time.perf_counter() - t0
        finally:
            stop(live)
    results = {k: figures(v, labels, truth) for k, v in answers.items()}
    fusion = manifest.fusion
    payload = {
        "model": f"{manifest.name} v{manifest.version}",
        "fusion": fusion.model_dump(mode="json"),
        "split": args.split,
        "requests": sum(len(v) for v in answers.values()),
        "seconds": seconds,
        "results": results,
    }
    table = markdown_table(
        [
            "sent",
            "n",
            "accuracy",
            "ECE",
            "ECE floor",
            "adaptive ECE",
            "NLL",
            "Brier",
            "answered (not abstained)",
            "error rate among answered",
        ],
        [
            [
                k,
                int(r["n"]),
                r["accuracy"],
                r["ece"],
                r["ece_floor"],
                r["adaptive_ece"],
                r["nll"],
                r["brier"],
                r["coverage"],
                r["risk_among_answered"] if r["coverage"] > 0 else "none answered",
            ]
            for k, r in results.items()
        ],
    )
    temps = ", ".join(
        f"{k} {v:.3g}" for k, v in {**fusion.calibration.temperatures, **fusion.calibration.fused_temperatures}.items()
    )
    md = (
        f"# Calibration through the running service ({manifest.name} v{manifest.version}, AV-digits {args.split} split, "
        f"held-out speaker)\n\n"
        f"Every {args.split} pair sent to `mla serve` three ways; the returned `confidence` scored against the truth (15 bins). "
        f"Fusion `{fusion.rule}`, temperatures {temps} (fitted on the {fusion.calibration.fitted_on}); abstention below "
        f"{', '.join(f'{k} {v:.3f}' for k, v in fusion.abstention.min_confidence.items())} (chosen on validation so that "
        f"the error rate among answers is at most {fusion.abstention.target_risk:.0%} with {fusion.abstention.confidence:.0%} "
        "confidence, counting every threshold the search tested; 1.000: no threshold could show it, so only certain "
        "answers are given). `ECE floor` is the ECE a perfectly calibrated model with the same confidences would show "
        f"on this many samples (the estimate's own noise).\n\n{table}\n"
    )
    diagnosis = markdown_table(
        ["sent", "ECE as served", "ECE floor", "temperature refit here", "ECE, refit here", "its floor"],
        [
            [k, r["ece"], r["ece_floor"], r["refit_here"]["temperature"], r["refit_here"]["ece"], r["refit_here"]["ece_floor"]]
            for k, r in results.items()
        ],
    )
    md += (
        f"\nA diagnosis, never served: one more temperature on the returned probabilities, fitted on this {args.split} "
        f"split itself (on half of the clips, scored on the other half; {REFIT_FOLDS}-fold, {REFIT_REPEATS} shuffles). "
        "Where `ECE, refit here` falls to its floor, the served confidence lacks only what the validation speaker could "
        "not teach about this one; where it stays above, a temperature cannot calibrate these answers even when fitted "
        f"on them. `temperature refit here` is the factor fitted on the whole split (1: none needed).\n\n{diagnosis}\n"
    )
    write("service_calibration", payload, md)
    print(md)


if __name__ == "__main__":
    main()
