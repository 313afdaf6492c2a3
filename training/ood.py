"""The out-of-distribution detectors `mla export` writes beside each graph (common.ood says what they compute).

Per modality:
- the bank: the training split's penultimate features, L2-normalised, one row per training item that has the
  modality (what the encoder was fitted on; saved as float32 .npy, hashed in the manifest);
- k: OOD_K, chosen by `python -m benchmarks.ood.features` on its tune sets against the validation split (the
  k in 1, 5, 10, 20, 50 with the best mean of tune near and tune far AUROC; benchmarks/results/ood_features.md);
- the threshold: the score that keeps TPR (95%) of the validation split's inputs in distribution, the issue's
  operating point; validation's rows are not in the bank, so their distances are those of new inputs.
Nothing here reads the test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from common.ood import TPR, NearestNeighbours, threshold_at_tpr
from training.models import MultimodalClassifier

# k per modality kind, chosen on the tune sets and validation by benchmarks/ood/features.py (audio 20, video 10);
# a kind it has not studied takes DEFAULT_K, the larger of the two (a larger k is the smoother density estimate).
OOD_K = {"audio": 20, "video": 10}
DEFAULT_K = 20


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


def fit_ood(
    model: MultimodalClassifier, data: Any, data_name: str, tpr: float = TPR
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest's `ood` section (bank file names and hashes left to the caller) and each modality's bank."""
    train, val = split_features(model, data, "train"), split_features(model, data, "val")
    section: dict[str, Any] = {}
    banks: dict[str, np.ndarray] = {}
    for m in model.cfg.modalities:
        if len(val[m]) == 0 or len(train[m]) == 0:
            raise ValueError(f"{m}: the train and val splits must both have it to fit its out-of-distribution detector")
        k = min(OOD_K.get(m, DEFAULT_K), len(train[m]))
        knn = NearestNeighbours.fit(train[m], k)
        scores = knn.score(val[m])
        threshold = threshold_at_tpr(scores, tpr)
        banks[m] = knn.bank
        section[m] = {
            "detector": "knn",
            "k": k,
            "threshold": threshold,
            "tpr": tpr,
            "fitted_on": f"bank: train split of {data_name} (n={len(train[m])}); threshold: its val split (n={len(val[m])})",
            "val": {
                "n": float(len(scores)),
                "mean": float(scores.mean()),
                "std": float(scores.std()),
                "in_distribution": float((scores >= threshold).mean()),
                **{f"q{q:g}": float(np.quantile(scores, q)) for q in (0.01, 0.05, 0.5)},
            },
        }
    return section, banks
