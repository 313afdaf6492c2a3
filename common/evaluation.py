"""Scoring predictions, in numpy: per-modality logits over a split, fused under a rule, scored per subset of modalities.

Torch-free, so a model exported as ONNX graphs is scored by the same code as a torch checkpoint (training.evaluate
fills Predictions from torch; model_export.repository.graph_predictions from the graphs).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from common import calibration
from common.fusion import FusionParams, answers, subset_name
from common.metrics import accuracy, macro_f1


class HasMinConfidence(Protocol):
    """An abstention threshold (training.calibrate.Threshold, or anything with its min_confidence)."""

    @property
    def min_confidence(self) -> float: ...


@dataclass
class Predictions:
    logits: dict[str, np.ndarray]  # modality -> [n, classes]; rows of absent samples are zeros (a uniform softmax)
    present: dict[str, np.ndarray]  # modality -> [n] bool
    labels: np.ndarray  # [n] int

    @property
    def modalities(self) -> list[str]:
        return list(self.logits)

    @property
    def n_classes(self) -> int:
        return next(iter(self.logits.values())).shape[1]

    def rows(self, subset: Sequence[str]) -> np.ndarray:
        """[n] bool: the samples that have at least one modality of `subset`."""
        return np.any(np.stack([self.present[m] for m in subset]), axis=0)

    def take(self, subset: Sequence[str]) -> Predictions:
        """Only the modalities of `subset`, only the samples that have one of them."""
        rows = self.rows(subset)
        return Predictions(
            {m: self.logits[m][rows] for m in subset}, {m: self.present[m][rows] for m in subset}, self.labels[rows]
        )


def subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, singles first: ("audio",), ("video",), ("audio", "video")."""
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def fused_for(preds: Predictions, subset: Sequence[str], params: FusionParams) -> tuple[np.ndarray, np.ndarray]:
    """Fused probabilities for the samples that have at least one modality of `subset`, and which rows those are."""
    part = preds.take(subset)
    return params(part.logits, part.present).probs, preds.rows(subset)


def score(preds: Predictions, params: FusionParams | None = None) -> dict[str, dict[str, Any]]:
    """Per modality subset: sample count, accuracy, macro-F1 and the calibration figures, under one fusion."""
    params = params or FusionParams()
    keys = ("n", "accuracy", "macro_f1", "nll", "brier", "ece", "ece_floor", "adaptive_ece")
    out: dict[str, dict[str, Any]] = {k: {} for k in keys}
    for sub in subsets(preds.modalities):
        probs, rows = fused_for(preds, sub, params)
        key = subset_name(sub)
        out["n"][key] = int(rows.sum())
        if out["n"][key] == 0:
            continue
        y, yhat = preds.labels[rows], probs.argmax(axis=1)
        out["accuracy"][key] = accuracy(y, yhat)
        out["macro_f1"][key] = macro_f1(y, yhat, preds.n_classes)
        for name, value in calibration.summary(probs, y).items():
            out[name][key] = value
    return out


def answered(preds: Predictions, params: FusionParams, thresholds: Mapping[str, HasMinConfidence]) -> dict[str, dict[str, Any]]:
    """Per set of modalities with a threshold, on the samples that have all of that set: the share answered
    (calibrated confidence at least the threshold) and the error rate among those answers (None: none answered)."""
    out: dict[str, dict[str, Any]] = {}
    for sub in subsets(preds.modalities):
        key = subset_name(sub)
        if key not in thresholds:
            continue
        have = np.all(np.stack([preds.present[m] for m in sub]), axis=0)
        probs = params({m: preds.logits[m][have] for m in sub}, {m: preds.present[m][have] for m in sub}).probs
        given = answers(probs.max(axis=1), thresholds[key].min_confidence)
        correct = probs.argmax(axis=1) == preds.labels[have]
        out[key] = {"coverage": float(given.mean()), "risk": float(1.0 - correct[given].mean()) if given.any() else None}
    return out
