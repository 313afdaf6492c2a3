"""Cross-fitted out-of-fold predictions by speaker: evidence for calibration from more than one voice.

    python -m training.crossfit --data csv:MANIFEST --out runs/crossfit [--epochs 30 ...]

The validation split holds one speaker, and a threshold fitted on one voice does not carry to the next (issue 28).
For each training speaker S (a `speaker` column in the manifest; the synthetic voices, one clip each, are never held
out), a model is trained with the same recipe on the training split without S, and without any row whose image S's
rows use (so S's drawings are unseen too), validated on the validation split as usual; it then predicts S's rows.
Together the folds give a prediction for every real training clip from a model that never saw its speaker or its
drawing. `mla export --crossfit DIR` fits the fusion section (temperatures, weights, abstention thresholds) on these
out-of-fold predictions pooled with the exported model's own validation predictions.

What this assumes: each fold model, trained on one speaker fewer, is calibrated as the final model is. Where it is
less accurate (one voice fewer to learn from), its confidences are lower and the thresholds fitted on them more
conservative for the final model, not less.

Writes DIR/<speaker>/ (the fold's run), DIR/<speaker>.csv (its manifest, beside the original's media) and
DIR/oof.npz (logits_<m>, present_<m> per modality, labels, speaker) with DIR/oof.json (what it was made from).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("crossfit")
SYNTHETIC_PREFIX = ("espeak-ng", "flite")  # synthetic voices: one clip each, never a fold of their own


def fold_rows(rows: list[dict[str, str]], speaker: str) -> list[dict[str, str]]:
    """The manifest of the fold that holds `speaker` out: its rows become the test split, the training rows of other
    speakers whose drawing none of its rows uses stay train, validation stays, the original test split goes."""
    held_images = {r["drawing"] for r in rows if r["split"] == "train" and r["speaker"] == speaker}
    out = []
    for r in rows:
        if r["split"] == "train" and r["speaker"] == speaker:
            out.append({**r, "split": "test"})
        elif (r["split"] == "train" and r["drawing"] not in held_images) or r["split"] == "val":
            out.append(r)
    return out


def fold_manifest(manifest: Path, speaker: str) -> Path:
    """Where the fold that holds `speaker` out writes its manifest: beside the original's, so its media paths hold."""
    return manifest.parent / f"crossfit-{hashlib.sha256(speaker.encode()).hexdigest()[:8]}-{speaker}.csv"


def speakers(rows: list[dict[str, str]]) -> list[str]:
    return sorted({r["speaker"] for r in rows if r["split"] == "train" and not r["speaker"].startswith(SYNTHETIC_PREFIX)})


def train_folds(commands: list[tuple[str, list[str]]], parallel: int, out: Path) -> None:
    """Run the folds' trainings, `parallel` at a time, each with CPU cores / `parallel` threads; with more than
    one, a fold's output goes to out/<speaker>.log. (Whether that is faster than one at a time on every core
    depends on the model and the machine: nothing here has measured it.)"""
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {**os.environ, **({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if parallel > 1 else {})}

    def run(speaker: str, cmd: list[str]) -> int:
        if parallel == 1:
            return subprocess.run(cmd, env=env).returncode
        with (out / f"{speaker}.log").open("w") as log_file:
            return subprocess.run(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT).returncode

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        codes = dict(zip([s for s, _ in commands], pool.map(lambda c: run(*c), commands), strict=True))
    failed = [s for s, code in codes.items() if code != 0]
    for speaker in failed:
        log.error("fold %s failed (exit %d)%s", speaker, codes[speaker], f": see {out / speaker}.log" if parallel > 1 else "")
    if failed:
        raise SystemExit(f"fold(s) {', '.join(failed)} failed to train")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="csv:MANIFEST with a speaker and a drawing column")
    parser.add_argument("--out", type=Path, default=Path("runs/crossfit"))
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="folds trained at once, each with CPU cores / N threads (default 1: one at a time, every core)",
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: the recipe's mla train options")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.data.startswith("csv:"):
        raise SystemExit("--data must be csv:MANIFEST (the folds are rewritten manifests)")
    manifest = Path(args.data[4:]).resolve()
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "speaker" not in rows[0] or "drawing" not in rows[0]:
        raise SystemExit(f"{manifest} has no speaker and drawing columns to fold by")
    train_args = [a for a in args.train_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    folds = speakers(rows)
    if len(folds) < 2:
        raise SystemExit(f"{manifest}: {len(folds)} training speaker(s); cross-fitting needs two or more")

    import torch

    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.data.specs import parse_spec
    from training.evaluate import predict_split

    if args.parallel < 1:
        raise SystemExit("--parallel must be at least 1")
    fold_csvs: dict[str, Path] = {}
    commands: list[tuple[str, list[str]]] = []
    for speaker in folds:
        fold_csv = fold_manifest(manifest, speaker)
        kept = fold_rows(rows, speaker)
        with fold_csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
        fold_csvs[speaker] = fold_csv
        run = args.out / speaker
        if not (run / "checkpoint.pt").is_file():
            n_train = sum(r["split"] == "train" for r in kept)
            log.info("fold %s: training on %d rows (holding out %d)", speaker, n_train, sum(r["split"] == "test" for r in kept))
            commands.append(
                (
                    speaker,
                    [sys.executable, "-m", "cli.main", "train", "--data", f"csv:{fold_csv}", *train_args, "--out", str(run)],
                )
            )
    train_folds(commands, args.parallel, args.out)

    parts: dict[str, list[np.ndarray]] = {}
    for speaker in folds:
        fold_csv, run = fold_csvs[speaker], args.out / speaker
        torch.set_num_threads(2)
        model = model_from_checkpoint(load_checkpoint(run))
        preds = predict_split(model, parse_spec(f"csv:{fold_csv}"), "test")
        for m in preds.modalities:
            parts.setdefault(f"logits_{m}", []).append(preds.logits[m])
            parts.setdefault(f"present_{m}", []).append(preds.present[m])
        parts.setdefault("labels", []).append(preds.labels)
        parts.setdefault("speaker", []).append(np.array([speaker] * len(preds.labels)))
        log.info("fold %s: %d out-of-fold predictions", speaker, len(preds.labels))
    out = args.out / "oof.npz"
    arrays: dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items()}
    np.savez_compressed(out, **arrays)
    (args.out / "oof.json").write_text(
        json.dumps({"data": args.data, "folds": folds, "train_args": train_args, "n": int(sum(len(x) for x in parts["labels"]))})
        + "\n"
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
