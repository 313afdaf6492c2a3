"""What changes MLA on AV-digits: projection strength, the projection itself, epochs, lr.

    python -m benchmarks.avdigits.sweep [--seed 0]

Trains MLA variants on the dataset run.py built (same split, same seed) and writes
benchmarks/results/avdigits_sweep.json and .md: test accuracy per modality subset for each
variant, with joint and unimodal from the same seed and run for reference.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from benchmarks.avdigits.run import SUBSETS
from benchmarks.report import markdown_table, write
from training.config import TrainConfig
from training.data.specs import cache_root
from training.evaluate import evaluate_run
from training.train import train

VARIANTS: dict[str, dict[str, Any]] = {
    "joint (reference)": {"method": "joint"},
    "unimodal (reference)": {"method": "unimodal"},
    "mla, alpha 1 (default)": {"method": "mla"},
    "mla, alpha 10": {"method": "mla", "owm_alpha": 10.0},
    "mla, alpha 100": {"method": "mla", "owm_alpha": 100.0},
    "mla, no projection": {"method": "mla", "owm_project": False},
    "mla, lr 0.02": {"method": "mla", "lr": 0.02},
    "mla, 20 epochs": {"method": "mla", "epochs": 20},
    "joint, 20 epochs": {"method": "joint", "epochs": 20},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs", type=Path, default=Path("runs/avdigits-sweep"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    manifest = cache_root() / "datasets" / "avdigits-v2-seed0" / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} is missing: run `make bench-accuracy` first")
    spec = f"csv:{manifest}"
    results: dict[str, Any] = {}
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        cfg = TrainConfig(**{"epochs": args.epochs, "seed": args.seed, "workers": 1, **overrides})
        run_dir = args.runs / f"v{i}"
        train(spec, run_dir, cfg)
        report = evaluate_run(run_dir, spec, "test")
        results[name] = {"config": cfg.to_dict(), "accuracy": report["accuracy"], "fusion": report["by_fusion"]}
        logging.info("%s: %s", name, report["accuracy"])
    rows = [[name, *(r["accuracy"][s] for s in SUBSETS)] for name, r in results.items()]
    md = (
        f"# AV-digits: what changes MLA (seed {args.seed}, small encoder)\n\n"
        "Test accuracy by modality subset (entropy fusion); one seed, so differences under about 0.02 are noise.\n\n"
        + markdown_table(["variant", *SUBSETS], rows)
        + "\n"
    )
    write("avdigits_sweep", {"seed": args.seed, "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
