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
  is not every speaker (version 2's threshold flagged 13% of the test speaker's audio);
- with auxiliary outliers (`mla export --outliers`, `mla refit-ood`): beside the kNN of each modality they give, a
  logistic regression on the same normalised features, training split against outliers (fit_probe); the detector's
  score is then the lower of the two standardised scores (common.ood.Detector;
  docs/decisions/2026-12-07-outlier-probe.md).
Nothing here reads the test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.modalities import kind
from common.ood import TPR, threshold_at_tpr
from training.data.specs import Sample, outliers_for
from training.detectors import build_detector, ood_section
from training.models import MultimodalClassifier

FeatureFn = Callable[[list[Sample]], dict[str, np.ndarray]]  # samples -> each modality's features [n_present, dims]


@torch.no_grad()
def sample_features(model: MultimodalClassifier, samples: list[Sample], batch_size: int = 128) -> dict[str, np.ndarray]:
    """Each modality's penultimate features [n_present, dims] on `samples`, in their order, eval mode, CPU."""
    from training.data.dataset import dataset_of, make_loader

    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {m: [] for m in model.cfg.modalities}
    for batch in make_loader(dataset_of(samples, model.cfg), batch_size, False, 0):
        for m in model.cfg.modalities:
            mask = batch[f"{m}_present"]
            if mask.any():
                ((feats, _),) = model({m: batch[m][mask]}).values()
                out[m].append(feats.float().numpy())
    model.train(was_training)
    dims = model.feature_dim
    return {m: np.concatenate(v) if v else np.zeros((0, dims), np.float32) for m, v in out.items()}


def split_features(model: MultimodalClassifier, data: Any, split: str, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Each modality's penultimate features [n_present, dims] on one split of `data`, in the split's order."""
    return sample_features(model, data.split(split), batch_size)


def outlier_features(
    model: MultimodalClassifier, outliers: str | None, features: FeatureFn | None = None
) -> dict[str, np.ndarray]:
    """The auxiliary outliers' features (`csv:PATH`, training.data.specs.read_outliers) per modality they give
    ({} without outliers; a modality they lack is absent, so its detector has no probe). `features`: how features
    are computed (default: the torch model's)."""
    if outliers is None:
        return {}
    feats = features or (lambda rows: sample_features(model, rows))
    return {m: f for m, f in feats(outliers_for(outliers, model.cfg.modalities)).items() if len(f)}


def new_speaker_quantiles(folder: Path, tpr: float = TPR, outliers: str | None = None) -> tuple[dict[str, float], str]:
    """Per modality, the share of the validation split's inputs to flag so that `tpr` of a new speaker's are kept.

    For each fold of a training.crossfit folder, its model's detector is built as fit_ood builds the final one (the
    fold's training features as the bank, the same k; with `outliers`, a probe on the fold's own features of them)
    and the score that keeps `tpr` of the held-out speaker's inputs is found; the share of the fold's validation
    inputs below that score is that fold's quantile. Scores of different models are not comparable, ranks within one
    model are: the final model's threshold is its validation scores' quantile at the folds' mean. Nothing here reads
    the test split."""
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.data.specs import parse_spec

    folds = json.loads((folder / "oof.json").read_text())["folds"]
    shares: dict[str, list[float]] = {}
    for fold in folds:
        ckpt = load_checkpoint(folder / fold)
        model = model_from_checkpoint(ckpt)
        data = parse_spec(ckpt["data"])
        train, val, held = (split_features(model, data, split) for split in ("train", "val", "test"))
        aux = outlier_features(model, outliers)
        for m in model.cfg.modalities:
            det, _ = build_detector(train[m], val[m], aux.get(m), min(kind(m).ood_k, len(train[m])))
            keep = threshold_at_tpr(det.score(held[m]), tpr)
            shares.setdefault(m, []).append(float(np.mean(det.score(val[m]) < keep)))
    about = ", ".join(f"{m} {np.mean(v):.3f} (folds {', '.join(f'{x:.3f}' for x in v)})" for m, v in shares.items())
    return {m: float(np.mean(v)) for m, v in shares.items()}, f"{len(folds)} folds by speaker ({', '.join(folds)}): {about}"


def fit_ood(
    model: MultimodalClassifier,
    data: Any,
    data_name: str,
    tpr: float = TPR,
    crossfit: Path | None = None,
    outliers: str | None = None,
    features: FeatureFn | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest's `ood` section (bank file names and hashes left to the caller) and each modality's bank.

    The threshold keeps `tpr` of the validation split; with `crossfit` (a training.crossfit folder), it keeps `tpr`
    of a new speaker's inputs instead, as the folds estimate it (new_speaker_quantiles). With `outliers` (`csv:PATH`
    of auxiliary outliers), each modality they give gets a probe beside its kNN (build_detector). `features`: how the
    bank's, validation's and the outliers' features are computed (default: the torch model's; an fp16 export passes
    its graphs', the ones the service scores)."""
    flag, about = ({}, "") if crossfit is None else new_speaker_quantiles(crossfit, tpr, outliers)
    feats = features or (lambda rows: sample_features(model, rows))
    train, val = feats(data.split("train")), feats(data.split("val"))
    ks = {m: kind(m).ood_k for m in model.cfg.modalities}
    aux = outlier_features(model, outliers, feats)
    return ood_section(
        train, val, aux, ks, f"bank: train split of {data_name}", flag if crossfit else None, about, tpr, outliers or ""
    )
