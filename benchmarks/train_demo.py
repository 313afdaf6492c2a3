"""MLA against joint and unimodal training on the demo data: test accuracy by modality subset.

    python -m benchmarks.train_demo [--epochs 12] [--seeds 0] [--out runs/bench-demo]

Each method is trained with the same encoder, epochs and seed, its checkpoint chosen on
validation, then scored on the test split with per-sample entropy fusion. Ratios are
against joint training, measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.report import markdown_table, write
from training.config import TrainConfig
from training.evaluate import evaluate_run
from training.train import train

METHODS = ("joint", "unimodal", "mla")
SUBSETS = ("audio", "video", "audio+video")


def run(data: str, epochs: int, seeds: list[int], out: Path, encoder: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for method in METHODS:
        per_seed = []
        for seed in seeds:
            run_dir = out / f"{method}-seed{seed}"
            t0 = time.perf_counter()
            train(data, run_dir, TrainConfig(method=method, epochs=epochs, seed=seed), encoder)
            seconds = time.perf_counter() - t0
            report = evaluate_run(run_dir, data, "test")
            per_seed.append(
                {
                    "seed": seed,
                    "train_seconds": round(seconds, 1),
                    "accuracy": report["accuracy"],
                    "macro_f1": report["macro_f1"],
                    "by_fusion": report["by_fusion"],
                }
            )
            logging.info("%s seed %d: %s (%.0f s)", method, seed, report["accuracy"], seconds)
        results[method] = {
            "runs": per_seed,
            "accuracy": {s: statistics.fmean(r["accuracy"][s] for r in per_seed) for s in SUBSETS},
            "macro_f1": {s: statistics.fmean(r["macro_f1"][s] for r in per_seed) for s in SUBSETS},
            "train_seconds": statistics.fmean(r["train_seconds"] for r in per_seed),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-demo"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(args.data, args.epochs, args.seeds, args.out, args.encoder)
    joint = results["joint"]["accuracy"]
    rows = []
    for method in METHODS:
        acc = results[method]["accuracy"]
        rows.append(
            [method, *(acc[s] for s in SUBSETS), *(acc[s] / joint[s] for s in SUBSETS), round(results[method]["train_seconds"])]
        )
    header = ["method", *(f"acc {s}" for s in SUBSETS), *(f"{s} / joint" for s in SUBSETS), "train s"]
    table = markdown_table(header, rows)
    fusion_rows = [
        [
            m,
            *(
                results[m]["runs"][0]["by_fusion"][r]["accuracy"]["audio+video"]
                for r in ("entropy", "batch_entropy", "equal", "fixed")
            ),
        ]
        for m in METHODS
    ]
    fusion = markdown_table(
        ["method", "entropy (per sample)", "entropy (per batch, authors')", "equal", "fixed (tuned on val)"], fusion_rows
    )
    md = (
        f"# MLA vs joint vs unimodal on `{args.data}` ({args.encoder} encoder, {args.epochs} epochs, seeds {args.seeds})\n\n"
        f"Test accuracy by modality subset (entropy fusion); ratios against joint training from the same run.\n\n{table}\n\n"
        f"Fusion rules on audio+video (seed {args.seeds[0]}):\n\n{fusion}\n"
    )
    write(
        "train_demo",
        {"data": args.data, "encoder": args.encoder, "epochs": args.epochs, "seeds": args.seeds, "results": results},
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
