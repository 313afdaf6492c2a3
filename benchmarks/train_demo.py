"""MLA against joint training and the unimodal ensemble on the demo data: test accuracy by modality subset.

    python -m benchmarks.train_demo [--epochs 12] [--seeds 0] [--out runs/bench-demo] [--render]

Each row is trained with the same encoder, epochs and seed (MLA with its alpha chosen on
validation), its checkpoint chosen on validation, then scored on the test split by its own
rule, calibrated on validation: joint by its summed logits, the others by per-sample
entropy fusion. Ratios are against joint training, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Any

from benchmarks.avdigits.run import ROWS, run_dir
from benchmarks.report import RESULTS, markdown_table, write
from training.config import OWM_ALPHA_GRID, TrainConfig
from training.evaluate import evaluate_run
from training.train import train

METHODS = tuple(ROWS)  # joint, unimodal ensemble, mla, mla without projection
SUBSETS = ("audio", "video", "audio+video")
FUSION = ("entropy_raw", "entropy", "batch_entropy", "equal", "fixed", "loglinear", "logit_sum")


def run(data: str, epochs: int, seeds: list[int], out: Path, encoder: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for method in METHODS:
        per_seed = []
        for seed in seeds:
            run = run_dir(out, method, seed)
            kind, overrides = ROWS[method]
            trained = train(data, run, TrainConfig(method=kind, epochs=epochs, seed=seed, **overrides), encoder, resume=True)
            seconds = float(trained["train_seconds"])
            report = evaluate_run(run, data, "test")
            per_seed.append(
                {
                    "seed": seed,
                    "train_seconds": round(seconds, 1),
                    "rule": report["fusion"],
                    "accuracy": report["accuracy"],
                    "macro_f1": report["macro_f1"],
                    "ece": report["ece"],
                    "by_fusion": report["by_fusion"],
                    **({"owm_alpha": trained["owm_alpha"]} if "owm_alpha" in trained else {}),
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


def render(report: dict[str, Any]) -> str:
    """The Markdown table of one run's results (benchmarks/results/train_demo.json)."""
    results, seeds = report["results"], report["seeds"]
    joint = results["joint"]["accuracy"]
    rows = []
    for method in METHODS:
        acc = results[method]["accuracy"]
        rows.append(
            [
                method,
                results[method]["runs"][0]["rule"],
                *(acc[s] for s in SUBSETS),
                *(acc[s] / joint[s] for s in SUBSETS),
                results[method]["runs"][0]["ece"]["audio+video"],
                round(results[method]["train_seconds"]),
            ]
        )
    header = ["method", "own rule", *(f"acc {s}" for s in SUBSETS), *(f"{s} / joint" for s in SUBSETS), "fused ECE", "train s"]
    table = markdown_table(header, rows)
    fusion_rows = [[m, *(results[m]["runs"][0]["by_fusion"][r]["accuracy"]["audio+video"] for r in FUSION)] for m in METHODS]
    fusion = markdown_table(["method", *FUSION], fusion_rows)
    alphas = ", ".join(f"seed {r['seed']}: {r['owm_alpha']:g}" for r in results["mla"]["runs"] if "owm_alpha" in r)
    return (
        f"# MLA vs joint vs the unimodal ensemble on `{report['data']}` ({report['encoder']} encoder, "
        f"{report['epochs']} epochs, seeds {seeds})\n\n"
        "Test accuracy by modality subset, each method by its own rule calibrated on validation; ratios against joint "
        f"training from the same run.\n\n{table}\n\n"
        f"`train s`: seconds of training; the unimodal ensemble's covers both models, MLA's its whole alpha search "
        f"(one run per alpha in {', '.join(f'{a:g}' for a in OWM_ALPHA_GRID)}, the one best on validation kept: {alphas}).\n\n"
        f"Every rule on audio+video (seed {seeds[0]}; `_raw`: uncalibrated, the paper's rule is `entropy_raw`):"
        f"\n\n{fusion}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-demo"))
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown from the saved JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.render:
        report = json.loads((RESULTS / "train_demo.json").read_text())
    else:
        results = run(args.data, args.epochs, args.seeds, args.out, args.encoder)
        report = {"data": args.data, "encoder": args.encoder, "epochs": args.epochs, "seeds": args.seeds, "results": results}
    md = render(report)
    write("train_demo", report, md)
    print(md)


if __name__ == "__main__":
    main()
