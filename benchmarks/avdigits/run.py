"""The accuracy benchmark: MLA against joint training and the unimodal ensemble, on real data.

    make bench-accuracy        # = python -m benchmarks.avdigits.run for each data set below

`--dataset` picks the data: `avdigits` (audio + video, benchmarks/avdigits/build.py), `aitdigits`
(audio + image + text, benchmarks/aitdigits/build.py) or `aitdigits-image-text` (its image and text).
Builds the dataset into the cache and, for each seed, trains four rows with the
same encoder and epochs:
- `joint`: one loss on the summed logits; selected and scored by its own prediction,
  argmax of the summed logits (`logit_sum`);
- `unimodal ensemble`: one model per modality, each selected on its own, entropy-fused;
- `mla`: MLA with `--owm-alpha auto`, alpha chosen on validation from the grid;
- `mla, no projection`: the ablation (alternating training alone).
Each is evaluated on the held-out speaker under its own rule, calibrated on validation
(as `mla export` serves it), and under every other rule, on every subset of the data set's
modalities. Writes benchmarks/results/NAME.json, NAME.md, NAME.png and NAME_curves.png (NAME: the
data set's), then refreshes docs/benchmarks.md. Exits 0 with a reason when ../shared/data is
absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.aitdigits import build as ait
from benchmarks.avdigits.build import SHARED, MissingSharedDataError
from benchmarks.avdigits.build import cached as avdigits
from benchmarks.report import RESULTS, markdown_table, write
from common.evaluation import subsets as all_subsets
from common.fusion import subset_name
from training.calibrate import RULE_VARIANTS, SERVED_RULE
from training.config import TrainConfig
from training.data.specs import parse_spec
from training.evaluate import evaluate_run
from training.train import train

# row -> (method, TrainConfig overrides)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "joint": ("joint", {}),
    "unimodal ensemble": ("unimodal", {}),
    "mla": ("mla", {}),
    "mla, no projection": ("mla", {"owm_project": False}),
}
# name -> (what the tables call it, the manifest's path in the cache, built on first use)
DATASETS: dict[str, tuple[str, Callable[[], Path]]] = {
    "avdigits": ("AV-digits: FSDD + MNIST", lambda: avdigits()),
    "aitdigits": ("AIT-digits: FSDD + MNIST + the digit in words", lambda: ait.cached()),
    "aitdigits-image-text": (
        "AIT-digits, image and text: MNIST + the digit in words",
        lambda: ait.cached(modalities=("image", "text")),
    ),
}
FUSION_COLUMNS = (
    "entropy_raw",
    "entropy",
    "energy",
    "loglinear",
    "gated_loglinear",
    "equal",
    "fixed",
    "batch_entropy",
    "logit_sum",
)
log = logging.getLogger("avdigits")


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def run_dir(runs: Path, row: str, seed: int) -> Path:
    return runs / f"{row.replace(', ', '-').replace(' ', '-')}-seed{seed}"


def plots(results: dict[str, Any], runs: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, subsets, name = list(results["rows"]), results["subsets"], results["name"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        acc = results["rows"][row]["accuracy"]
        means = [acc[s]["mean"] for s in subsets]
        errs = [[acc[s]["mean"] - acc[s]["min"] for s in subsets], [acc[s]["max"] - acc[s]["mean"] for s in subsets]]
        ax.bar(np.arange(len(subsets)) + (i - (len(rows) - 1) / 2) * width, means, width, yerr=errs, capsize=3, label=row)
    ax.set_xticks(range(len(subsets)), subsets, fontsize=7 if len(subsets) > 4 else 10)
    ax.set_ylabel("test accuracy (held-out speaker)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"{results['title']}: accuracy by method and subset (own rule; bars: min-max over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rows), figsize=(3.3 * len(rows), 3.5), sharey=True)
    for ax, row in zip(axes, rows, strict=True):
        metrics = run_dir(runs, row, results["seeds"][0]) / "metrics.jsonl"
        epochs = [json.loads(line) for line in metrics.read_text().splitlines()]
        epochs = [r for r in epochs if r["event"] == "epoch"]
        for key in subsets:
            ax.plot([r["epoch"] for r in epochs], [r["val_accuracy"][key] for r in epochs], marker=".", label=key)
        ax.set_title(row, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}_curves.png", dpi=120)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    def cell(d: dict[str, float]) -> str:
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    # results written before the data set was a choice are AV-digits'
    subsets = results.get("subsets", ["audio", "video", "audio+video"])
    results = {"title": DATASETS["avdigits"][0], **results}
    rows, full = results["rows"], subsets[-1]
    joint = rows["joint"]["accuracy"]
    table = markdown_table(
        ["method", "own rule", *subsets, *(f"{s} / joint" for s in subsets), "fused ECE", "train s"],
        [
            [
                name,
                r["rule"],
                *(cell(r["accuracy"][s]) for s in subsets),
                *(r["accuracy"][s]["mean"] / joint[s]["mean"] for s in subsets),
                cell(r["ece"][full]),
                round(r["train_seconds"]),
            ]
            for name, r in rows.items()
        ],
    )
    fusion = markdown_table(
        ["method", *FUSION_COLUMNS],
        [[name, *(cell(r["fusion"][v]["accuracy"]) for v in FUSION_COLUMNS)] for name, r in rows.items()],
    )
    ece = markdown_table(
        ["method", *FUSION_COLUMNS],
        [[name, *(cell(r["fusion"][v]["ece"]) for v in FUSION_COLUMNS)] for name, r in rows.items()],
    )
    if results.get("owm_alpha") is not None:
        alphas = f"fixed at {results['owm_alpha']:g} for every seed (`--owm-alpha`; {results['owm_alpha_why']})"
    else:
        alphas = "chosen on validation: " + "; ".join(
            f"seed {r['seed']}: alpha {r['owm_alpha']:g} (validation accuracy by alpha {json.dumps(r['alpha_search'])})"
            for r in rows["mla"]["runs"]
        )
    return (
        f"# {results['title']}, held-out speaker ({results['encoder']} encoder, {results['epochs']} epochs, "
        f"seeds {results['seeds']})\n\n"
        "Test accuracy (mean ± std over seeds) by modality subset, each method under its own rule calibrated on validation "
        "(joint: argmax of its summed logits; the others: per-sample entropy fusion); ratios against joint from the same run; "
        "fused ECE with 15 bins.\n\n"
        f"{table}\n\nMLA's alpha, {alphas}.\n\n"
        f"Every rule on the corrupted test set, {full} accuracy (`_raw`: uncalibrated; the paper's rule is `entropy_raw`; "
        f"the others calibrated on validation; `{SERVED_RULE}` is the rule `mla export` serves, its layers kept by the "
        "ablation in docs/decisions/2026-12-06-fusion-layers-ablation.md):\n\n"
        f"{fusion}\n\nThe same, fused ECE (15 bins):\n\n{ece}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--dataset", choices=list(DATASETS), default="avdigits")
    parser.add_argument("--runs", type=Path, default=None, help="where the runs go (default: runs/DATASET)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--name", default=None, help="results file name (default: the data set's)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="the methods to train (default: all)")
    parser.add_argument(
        "--owm-alpha",
        type=float,
        default=None,
        help="MLA's projection alpha for every seed (default: searched on validation, four trainings per seed)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    title, dataset = DATASETS[args.dataset]
    args.runs = args.runs or Path("runs") / args.dataset
    args.name = args.name or args.dataset
    try:
        manifest = dataset()
    except MissingSharedDataError as exc:
        print(f"skipped: {exc}; the benchmark needs the shared data sets in {SHARED}")
        sys.exit(0)
    spec = f"csv:{manifest}"
    subsets = [subset_name(c) for c in all_subsets(parse_spec(spec).modalities)]
    results: dict[str, Any] = {
        "name": args.name,
        "title": title,
        "data": manifest.parent.name,
        "subsets": subsets,
        "encoder": args.encoder,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "lr": args.lr,
        "rows": {},
    }
    if args.owm_alpha is not None:
        results["owm_alpha"] = args.owm_alpha
        results["owm_alpha_why"] = "the default model's recipe, chosen on AV-digits' validation split; no search, to fit the time"
    for name, (method, overrides) in ((r, ROWS[r]) for r in args.rows):
        if method == "mla" and args.owm_alpha is not None:
            overrides = {**overrides, "owm_alpha": args.owm_alpha}
        per_seed = []
        for seed in args.seeds:
            out = run_dir(args.runs, name, seed)
            cfg = TrainConfig(method=method, epochs=args.epochs, seed=seed, lr=args.lr, workers=1, **overrides)
            trained = train(spec, out, cfg, args.encoder, resume=True)  # a finished run is kept, a killed one continues
            seconds = float(trained["train_seconds"])  # training alone (MLA: its whole alpha search)
            report = evaluate_run(out, spec, "test")
            kept = {k: report[k] for k in ("fusion", "accuracy", "macro_f1", "ece", "nll", "by_fusion", "abstention")}
            extra = {"owm_alpha": trained["owm_alpha"], "alpha_search": trained["alpha_search"]} if "owm_alpha" in trained else {}
            per_seed.append({"seed": seed, "train_seconds": seconds, **kept, **extra})
            log.info("%s seed %d: %s (%.0f s)", name, seed, report["accuracy"], seconds)
        results["rows"][name] = {
            "method": method,
            "rule": per_seed[0]["fusion"],
            "runs": per_seed,
            "accuracy": {s: spread([r["accuracy"][s] for r in per_seed]) for s in subsets},
            "macro_f1": {s: spread([r["macro_f1"][s] for r in per_seed]) for s in subsets},
            "ece": {s: spread([r["ece"][s] for r in per_seed]) for s in subsets},
            "fusion": {
                v: {k: spread([r["by_fusion"][v][k][subsets[-1]] for r in per_seed]) for k in ("accuracy", "ece")}
                for v in RULE_VARIANTS
            },
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
