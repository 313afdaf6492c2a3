"""The AV-digits benchmark: MLA against joint and unimodal training on real data.

    make bench-accuracy        # = python -m benchmarks.avdigits.run

Builds the dataset (build.py) into the cache, trains `mla`, `joint` and `unimodal` with
the same encoder and epochs for each seed, evaluates every modality subset on the
held-out speaker, compares the fusion rules on that (corrupted) test set, and writes
benchmarks/results/avdigits.json, avdigits.md, avdigits.png (accuracy by method and
subset, spread over seeds) and avdigits_curves.png (per-modality validation accuracy
per epoch: the imbalance of joint training), then refreshes docs/benchmarks.md and the
README from the JSON. Exits 0 with a reason when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.avdigits.build import SHARED, MissingSharedDataError, build
from benchmarks.report import RESULTS, markdown_table, write
from training.config import TrainConfig
from training.data.specs import cache_root
from training.evaluate import evaluate_run
from training.train import train

METHODS = ("joint", "unimodal", "mla")
SUBSETS = ("audio", "video", "audio+video")
RULES = ("entropy", "batch_entropy", "equal", "fixed")
log = logging.getLogger("avdigits")


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def plots(results: dict[str, Any], runs: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.25
    for i, method in enumerate(METHODS):
        acc = results["methods"][method]["accuracy"]
        means = [acc[s]["mean"] for s in SUBSETS]
        errs = [[acc[s]["mean"] - acc[s]["min"] for s in SUBSETS], [acc[s]["max"] - acc[s]["mean"] for s in SUBSETS]]
        ax.bar(np.arange(len(SUBSETS)) + (i - 1) * width, means, width, yerr=errs, capsize=3, label=method)
    ax.set_xticks(range(len(SUBSETS)), SUBSETS)
    ax.set_ylabel("test accuracy (held-out speaker)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("AV-digits: accuracy by method and modality subset (bars: min-max over seeds)")
    fig.tight_layout()
    fig.savefig(out / "avdigits.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(METHODS), figsize=(12, 3.5), sharey=True)
    for ax, method in zip(axes, METHODS, strict=True):
        metrics = runs / f"{method}-seed{results['seeds'][0]}" / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rows = [r for r in rows if r["event"] == "epoch"]
        for key in SUBSETS:
            ax.plot([r["epoch"] for r in rows], [r["val_accuracy"][key] for r in rows], marker=".", label=key)
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "avdigits_curves.png", dpi=120)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    def cell(d: dict[str, float]) -> str:
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    joint = results["methods"]["joint"]["accuracy"]
    rows = [
        [
            m,
            *(cell(results["methods"][m]["accuracy"][s]) for s in SUBSETS),
            *(results["methods"][m]["accuracy"][s]["mean"] / joint[s]["mean"] for s in SUBSETS),
            round(results["methods"][m]["train_seconds"]),
        ]
        for m in METHODS
    ]
    table = markdown_table(["method", *SUBSETS, *(f"{s} / joint" for s in SUBSETS), "train s"], rows)
    fusion_rows = [[m, *(cell(results["methods"][m]["fusion"][r]) for r in RULES)] for m in METHODS]
    fusion = markdown_table(
        ["method", "entropy, per sample", "entropy, per batch (authors')", "equal", "fixed (tuned on val)"], fusion_rows
    )
    return (
        f"# AV-digits: FSDD + MNIST, held-out speaker ({results['encoder']} encoder, {results['epochs']} epochs, "
        f"seeds {results['seeds']})\n\nTest accuracy (mean ± std over seeds) by modality subset, entropy fusion; "
        f"ratios against joint training from the same run.\n\n{table}\n\n"
        f"Fusion rules on the corrupted test set (audio+video accuracy):\n\n{fusion}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--runs", type=Path, default=Path("runs/avdigits"))
    parser.add_argument("--owm-alpha", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--name", default="avdigits", help="results file name")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    data_dir = cache_root() / "datasets" / "avdigits-v2-seed0"
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        try:
            log.info("building AV-digits into %s", data_dir)
            build(data_dir, 0)
        except MissingSharedDataError as exc:
            print(f"skipped: {exc}; the benchmark needs the shared data sets in {SHARED}")
            sys.exit(0)
    spec = f"csv:{manifest}"
    results: dict[str, Any] = {
        "data": "avdigits-v2",
        "encoder": args.encoder,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "lr": args.lr,
        "owm_alpha": args.owm_alpha,
        "methods": {},
    }
    for method in METHODS:
        per_seed = []
        for seed in args.seeds:
            run_dir = args.runs / f"{method}-seed{seed}"
            t0 = time.perf_counter()
            cfg = TrainConfig(method=method, epochs=args.epochs, seed=seed, lr=args.lr, owm_alpha=args.owm_alpha, workers=1)
            train(spec, run_dir, cfg, args.encoder)
            seconds = time.perf_counter() - t0
            report = evaluate_run(run_dir, spec, "test")
            kept = {k: report[k] for k in ("accuracy", "macro_f1", "by_fusion")}
            per_seed.append({"seed": seed, "train_seconds": seconds, **kept})
            log.info("%s seed %d: %s (%.0f s)", method, seed, report["accuracy"], seconds)
        results["methods"][method] = {
            "runs": per_seed,
            "accuracy": {s: spread([r["accuracy"][s] for r in per_seed]) for s in SUBSETS},
            "macro_f1": {s: spread([r["macro_f1"][s] for r in per_seed]) for s in SUBSETS},
            "fusion": {rule: spread([r["by_fusion"][rule]["accuracy"]["audio+video"] for r in per_seed]) for rule in RULES},
            "train_seconds": statistics.fmean(r["train_seconds"] for r in per_seed),
        }
    md = markdown(results)
    write(args.name, results, md)
    plots(results, args.runs, RESULTS)
    from benchmarks.readme import main as refresh_docs

    refresh_docs()
    print(md)


if __name__ == "__main__":
    main()
