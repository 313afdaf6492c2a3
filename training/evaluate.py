"""Evaluation: per-modality predictions, fused per sample, over every subset of modalities."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from common.fusion import fuse
from training.data.dataset import Batch
from training.models import MultimodalClassifier


@dataclass
class Predictions:
    probs: dict[str, np.ndarray]  # modality -> [n, classes], rows of absent samples are uniform
    present: dict[str, np.ndarray]  # modality -> [n] bool
    labels: np.ndarray  # [n] int


def to_device(batch: dict[str, Any], device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


@torch.no_grad()
def predict(model: MultimodalClassifier, loader: Any, device: torch.device) -> Predictions:
    was_training = model.training
    model.eval()
    mods = list(model.cfg.modalities)
    probs: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    present: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    labels: list[np.ndarray] = []
    for raw in loader:
        batch = to_device(raw, device)
        n = batch["label"].shape[0]
        for m in mods:
            mask = batch[f"{m}_present"]
            p = torch.full((n, model.cfg.n_classes), 1.0 / model.cfg.n_classes, device=device)
            if mask.any():
                ((_, logits),) = model({m: batch[m][mask]}).values()
                p[mask] = torch.softmax(logits.float(), dim=-1)
            probs[m].append(p.cpu().numpy())
            present[m].append(mask.cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
    model.train(was_training)
    return Predictions(
        {m: np.concatenate(v) for m, v in probs.items()},
        {m: np.concatenate(v) for m, v in present.items()},
        np.concatenate(labels),
    )


def subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, singles first: ("audio",), ("video",), ("audio", "video")."""
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset)


def fused_for(
    preds: Predictions, subset: Sequence[str], rule: str, weights: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fused probabilities for the samples that have at least one modality of `subset`."""
    rows = np.any(np.stack([preds.present[m] for m in subset]), axis=0)
    probs = {m: preds.probs[m][rows] for m in subset}
    present = {m: preds.present[m][rows] for m in subset}
    fused, _ = fuse(probs, rule, present, weights)
    return fused, rows


def score(preds: Predictions, rule: str = "entropy", weights: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy, macro-F1 and sample count per modality subset under one fusion rule."""
    acc: dict[str, float] = {}
    f1: dict[str, float] = {}
    n: dict[str, int] = {}
    n_classes = next(iter(preds.probs.values())).shape[1]
    for sub in subsets(list(preds.probs)):
        fused, rows = fused_for(preds, sub, rule, weights)
        key = subset_name(sub)
        n[key] = int(rows.sum())
        if n[key] == 0:
            continue
        y, yhat = preds.labels[rows], fused.argmax(axis=1)
        acc[key] = float(accuracy_score(y, yhat))
        f1[key] = float(f1_score(y, yhat, average="macro", labels=list(range(n_classes)), zero_division=0))
    return {"accuracy": acc, "macro_f1": f1, "n": n}


def tune_fixed_weights(preds: Predictions, steps: int = 20) -> dict[str, float]:
    """The best constant weights for all modalities fused, by accuracy on these (validation) predictions."""
    names = list(preds.probs)
    best, best_acc = {m: 1.0 / len(names) for m in names}, -1.0
    grid = np.linspace(0.0, 1.0, steps + 1)
    for combo in itertools.product(grid, repeat=len(names) - 1):
        if sum(combo) > 1.0 + 1e-9:
            continue
        w = dict(zip(names, [*combo, 1.0 - sum(combo)], strict=False))
        fused, rows = fused_for(preds, names, "fixed", w)
        a = float((fused.argmax(axis=1) == preds.labels[rows]).mean())
        if a > best_acc + 1e-12:
            best, best_acc = {m: float(v) for m, v in w.items()}, a
    return best


def confusion_plot(preds: Predictions, class_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    names = list(preds.probs)
    fused, rows = fused_for(preds, names, "entropy")
    cm = confusion_matrix(preds.labels[rows], fused.argmax(axis=1), labels=list(range(len(class_names))))
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(class_names), 0.6 + 0.6 * len(class_names)))
    ConfusionMatrixDisplay(cm, display_labels=class_names).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_run(run_dir: Path, data: str, split: str = "test", workers: int = 1, batch_size: int = 128) -> dict[str, Any]:
    """Score a trained run on one split under every fusion rule; write a confusion-matrix plot."""
    from training.checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint
    from training.data.dataset import build_dataset, make_loader
    from training.data.specs import DataError, parse_spec

    ckpt = load_checkpoint(run_dir)
    model = model_from_checkpoint(ckpt)
    manifest = parse_spec(data)
    if manifest.labels != model.cfg.labels:
        raise DataError(f"{data}: labels {manifest.labels} differ from the model's {model.cfg.labels}")
    device = torch.device("cpu")
    preds = predict(model, make_loader(build_dataset(manifest, split, model.cfg, workers), batch_size, False, 0), device)
    # Fixed weights are tuned on validation, never on the split being scored.
    fixed = None
    if split != "val":
        try:
            fixed = tune_fixed_weights(
                predict(model, make_loader(build_dataset(manifest, "val", model.cfg, workers), batch_size, False, 0), device)
            )
        except DataError:
            fixed = None
    rules: dict[str, dict[str, Any]] = {r: score(preds, r) for r in ("entropy", "equal", "batch_entropy")}
    if fixed is not None:
        rules["fixed"] = {**score(preds, "fixed", fixed), "weights": fixed}
    headline = rules["entropy"]
    out_dir = checkpoint_path(run_dir).parent
    plot = out_dir / f"confusion_{split}.png"
    confusion_plot(preds, model.cfg.labels, plot, f"{ckpt['method']} on {split} (entropy fusion)")
    return {
        "n": len(preds.labels),
        "split": split,
        "method": ckpt["method"],
        "encoder": model.cfg.encoder,
        "fusion": "entropy",
        "accuracy": headline["accuracy"],
        "macro_f1": headline["macro_f1"],
        "n_per_subset": headline["n"],
        "by_fusion": {r: {k: v for k, v in s.items() if k != "n"} for r, s in rules.items()},
        "labels": model.cfg.labels,
        "confusion_plot": str(plot),
    }
