"""Evaluation: per-modality logits, fused per sample, over every subset of modalities and every fusion rule."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from common.evaluation import Predictions, answered, fused_for, score, subsets
from common.fusion import FusionParams, subset_name
from training.data.dataset import Batch
from training.models import MultimodalClassifier

if TYPE_CHECKING:
    from training.data.specs import DatasetManifest


def to_device(batch: dict[str, Any], device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


@torch.no_grad()
def predict(model: MultimodalClassifier, loader: Any, device: torch.device) -> Predictions:
    was_training = model.training
    model.eval()
    mods = list(model.cfg.modalities)
    logits: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    present: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    labels: list[np.ndarray] = []
    for raw in loader:
        batch = to_device(raw, device)
        n = batch["label"].shape[0]
        for m in mods:
            mask = batch[f"{m}_present"]
            z = torch.zeros((n, model.cfg.n_classes), device=device)
            if mask.any():
                ((_, out),) = model({m: batch[m][mask]}).values()
                z[mask] = out.float()
            logits[m].append(z.cpu().numpy())
            present[m].append(mask.cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
    model.train(was_training)
    return Predictions(
        {m: np.concatenate(v).astype(np.float64) for m, v in logits.items()},
        {m: np.concatenate(v) for m, v in present.items()},
        np.concatenate(labels),
    )


def predict_split(
    model: MultimodalClassifier, manifest: DatasetManifest, split: str, batch_size: int = 128, workers: int = 1
) -> Predictions:
    """The model's predictions on one split of a data set, on the CPU, in the split's order."""
    from training.data.dataset import build_dataset, make_loader

    loader = make_loader(build_dataset(manifest, split, model.cfg, workers), batch_size, False, 0)
    return predict(model, loader, torch.device("cpu"))


def confusion_plot(preds: Predictions, params: FusionParams, class_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fused, rows = fused_for(preds, preds.modalities, params)
    cm = confusion_matrix(preds.labels[rows], fused.argmax(axis=1), labels=list(range(len(class_names))))
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(class_names), 0.6 + 0.6 * len(class_names)))
    ConfusionMatrixDisplay(cm, display_labels=class_names).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_run(run_dir: Path, data: str, split: str = "test", workers: int = 1, batch_size: int = 128) -> dict[str, Any]:
    """Score a trained run on one split under every fusion rule, raw and calibrated on validation; write plots.

    Calibration (temperatures, fused temperatures, fitted weights, the abstention threshold)
    is fitted on the validation split, never on the split being scored.
    """
    from training.calibrate import CONFIDENCE, RULE_VARIANTS, TARGET_RISK, fit_abstention, fit_fusion, own_rule
    from training.checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint
    from training.data.specs import DataError, parse_spec
    from training.plots import plot_calibration

    ckpt = load_checkpoint(run_dir)
    model = model_from_checkpoint(ckpt)
    manifest = parse_spec(data)
    if manifest.labels != model.cfg.labels:
        raise DataError(f"{data}: labels {manifest.labels} differ from the model's {model.cfg.labels}")

    preds = predict_split(model, manifest, split, batch_size, workers)
    val = preds if split == "val" else predict_split(model, manifest, "val", batch_size, workers)
    method = ckpt["method"]
    own = own_rule(method)
    rules: dict[str, dict[str, Any]] = {}
    fitted: dict[str, FusionParams] = {}
    for variant, (rule, calibrated) in RULE_VARIANTS.items():
        params = fit_fusion(val, rule, calibrated)
        fitted[variant] = params
        rules[variant] = {**score(preds, params), "params": _params_dict(params)}
    headline = fitted[own]
    thresholds = fit_abstention(val, headline)
    abstention = {
        key: {
            "min_confidence": thresholds[key].min_confidence,
            "val_coverage": thresholds[key].coverage,
            "val_risk": thresholds[key].risk,
            "coverage": fig["coverage"],
            "risk": 0.0 if fig["risk"] is None else fig["risk"],
        }
        for key, fig in answered(preds, headline, thresholds).items()
    }
    out_dir = checkpoint_path(run_dir).parent
    plots = {
        "confusion": out_dir / f"confusion_{split}.png",
        "reliability": out_dir / f"reliability_{split}.png",
        "risk_coverage": out_dir / f"risk_coverage_{split}.png",
    }
    confusion_plot(preds, headline, model.cfg.labels, plots["confusion"], f"{method} on {split} ({own}, calibrated)")
    curves = {}
    for name, subset, variant in [
        *((f"fused, {v}", preds.modalities, v) for v in (f"{own}_raw", own)),
        *((f"{m}, calibrated", [m], own) for m in preds.modalities),
    ]:
        probs, rows = fused_for(preds, subset, fitted[variant])
        curves[name] = (probs, preds.labels[rows])
    mark = (f"fused, {own}", thresholds[subset_name(preds.modalities)].min_confidence)
    plot_calibration(curves, plots["reliability"], plots["risk_coverage"], f"{method} on {split}", mark)
    own_scores = rules[own]
    return {
        "n": len(preds.labels),
        "split": split,
        "method": method,
        "encoder": model.cfg.encoder,
        "fusion": own,
        **{k: own_scores[k] for k in ("accuracy", "macro_f1", "nll", "brier", "ece", "ece_floor", "adaptive_ece")},
        "n_per_subset": own_scores["n"],
        "by_fusion": {r: {k: v for k, v in s.items() if k != "n"} for r, s in rules.items()},
        "abstention": {"target_risk": TARGET_RISK, "confidence": CONFIDENCE, "by_subset": abstention},
        "labels": model.cfg.labels,
        "plots": {k: str(v) for k, v in plots.items()},
    }


def _params_dict(params: FusionParams) -> dict[str, Any]:
    return {
        "rule": params.rule,
        "weights": dict(params.weights) if params.weights else None,
        "temperatures": dict(params.temperatures) if params.temperatures else None,
        "fused_temperatures": dict(params.fused_temperatures) if params.fused_temperatures else None,
        "confidence_maps": {k: asdict(c) for k, c in (params.confidence_maps or {}).items()} or None,
        "mixture_share": params.mixture_share,
    }


__all__ = ["Predictions", "answered", "fused_for", "predict", "predict_split", "score", "subset_name", "subsets", "to_device"]
