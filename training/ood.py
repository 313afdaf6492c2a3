"""The out-of-distribution detectors `mla export` writes beside each graph (common.ood says what they compute).

Per modality:
- the bank: the training split's penultimate features, L2-normalised, one row per training item that has the
  modality (what the encoder was fitted on; saved as float32 .npy, hashed in the manifest);
- k: the kind's `ood_k` (common.modalities), chosen by `python -m benchmarks.ood.features` on its tune sets
  against the validation split (the k in 1, 5, 10, 20, 50 with the best mean of tune near and tune far AUROC;
  benchmarks/results/ood_features.md);
- the threshold: the score that keeps TPR (95%) of the validation split's inputs in distribution, the issue's
  operating point; validation's rows are not in the bank, so their distances are those of new inputs. With the
  cross-fitted folds of training.crossfit, it keeps 95% of a new speaker's inputs instead: one validation speaker
  is not every speaker (version 2's threshold flagged 13% of the test speaker's audio).
Nothing here reads the test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.modalities import kind
from common.ood import TPR, NearestNeighbours, threshold_at_tpr
from training.models import MultimodalClassifier


@torch.no_grad()
def split_features(model: MultimodalClassifier, data: Any, split: str, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Each modality's penultimate features [n_present, dims] on one split, in the split's order, eval mode, CPU."""
    from training.data.dataset import build_dataset, make_loader

    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {m: [] for m in model.cfg.modalities}
    for batch in make_loader(build_dataset(data, split, model.cfg), batch_size, False, 0):
        for m in model.cfg.modalities:
            mask = batch[f"{m}_present"]
            if mask.any():
                ((feats, _),) = model({m: batch[m][mask]}).values()
                out[m].append(feats.float().numpy())
    model.train(was_training)
    dims = model.feature_dim
    return {m: np.concatenate(v) if v else np.zeros((0, dims), np.float32) for m, v in out.items()}


def new_speaker_quantiles(folder: Path, tpr: float = TPR) -> tuple[dict[str, float], str]:
    """Per modality, the share of the validation split's inputs to flag so that `tpr` of a new speaker's are kept.

    For each fold of a training.crossfit folder, its model's detector is built as fit_ood builds the final one (the
    fold's training features as the bank, the same k) and the score that keeps `tpr` of the held-out speaker's inputs
    is found; the share of the fold's validation inputs below that score is that fold's quantile. Scores of different
    models are not comparable, ranks within one model are: the final model's threshold is its validation scores'
    quantile at the folds' mean. Nothing here reads the test split."""
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.data.specs import parse_spec

    folds = json.loads((folder / "oof.json").read_text())["folds"]
    shares: dict[str, list[float]] = {}
    for fold in folds:
        ckpt = load_checkpoint(folder / fold)
        model = model_from_checkpoint(ckpt)
        data = parse_spec(ckpt["data"])
        train, val, held = (split_features(model, data, split) for split in ("train", "val", "test"))
        for m in model.cfg.modalities:
            knn = NearestNeighbours.fit(train[m], min(kind(m).ood_k, len(train[m])))
            keep = threshold_at_tpr(knn.score(held[m]), tpr)
            shares.setdefault(m, []).append(float(np.mean(knn.score(val[m]) < keep)))
    about = ", ".join(f"{m} {np.mean(v):.3f} (folds {', '.join(f'{x:.3f}' for x in v)})" for m, v in shares.items())
    return {m: float(np.mean(v)) for m, v in shares.items()}, f"{len(folds)} folds by speaker ({', '.join(folds)}): {about}"


def fit_ood(
    model: MultimodalClassifier, data: Any, data_name: str, tpr: float = TPR, crossfit: Path | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest's `ood` section (bank file names and hashes left to the caller) and each modality's bank.

    The threshold keeps `tpr` of the validation split; with `crossfit` (a training.crossfit folder), it keeps `tpr`
    of a new speaker's inputs instead, as the folds estimate it (new_speaker_quantiles)."""
    flag, about = ({}, "") if crossfit is None else new_speaker_quantiles(crossfit, tpr)
    train, val = split_features(model, data, "train"), split_features(model, data, "val")
    section: dict[str, Any] = {}
    banks: dict[str, np.ndarray] = {}
    for m in model.cfg.modalities:
        if len(val[m]) == 0 or len(train[m]) == 0:
            raise ValueError(f"{m}: the train and val splits must both have it to fit its out-of-distribution detector")
        k = min(kind(m).ood_k, len(train[m]))
        knn = NearestNeighbours.fit(train[m], k)
        scores = knn.score(val[m])
        threshold = threshold_at_tpr(scores, 1.0 - flag.get(m, 1.0 - tpr))
        banks[m] = knn.bank
        section[m] = {
            "detector": "knn",
            "k": k,
            "threshold": threshold,
            "tpr": tpr,
            "fitted_on": f"bank: train split of {data_name} (n={len(train[m])}); threshold: its val split (n={len(val[m])})"
            + (f", at the quantile that keeps {tpr:.0%} of a new speaker's inputs in {about}" if crossfit else ""),
            "val": {
                "n": float(len(scores)),
                "mean": float(scores.mean()),
                "std": float(scores.std()),
                "in_distribution": float((scores >= threshold).mean()),
                **{f"q{q:g}": float(np.quantile(scores, q)) for q in (0.01, 0.05, 0.5)},
            },
        }
    return section, banks
