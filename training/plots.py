"""Plots: validation curves per epoch, reliability diagrams and risk-coverage curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common import calibration


def plot_validation_curves(metrics_jsonl: Path, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("event") == "epoch"]
    if not rows:
        return
    keys = list(rows[0]["val_accuracy"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        ax.plot([r["epoch"] for r in rows], [r["val_accuracy"].get(key) for r in rows], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def plot_calibration(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    reliability_png: Path,
    risk_png: Path,
    title: str,
    threshold: tuple[str, float],
) -> None:
    """`curves`: name -> (probabilities [n, classes], labels [n]); `threshold`: (curve, min confidence) to mark.

    A reliability diagram per curve, and their risk-coverage curves in one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.4), sharey=True, squeeze=False)
    for ax, (name, (probs, labels)) in zip(axes[0], curves.items(), strict=True):
        rel = calibration.reliability(probs, labels)
        centers = [(lo + hi) / 2 for lo, hi in zip(rel["lower"], rel["upper"], strict=True)]
        width = 1.0 / len(centers)
        acc = np.nan_to_num(np.asarray(rel["accuracy"]))
        ax.bar(centers, acc, width=width, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
        ax.set_title(f"{name}\nECE {calibration.ece(probs, labels):.3f}, n={len(labels)}", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Reliability: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(reliability_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (probs, labels) in curves.items():
        coverage, risk, _ = calibration.risk_coverage(probs, labels)
        ax.plot(coverage, risk, label=name)
    name, value = threshold
    answered = curves[name][0].max(axis=1) >= value
    ax.axvline(
        float(answered.mean()), color="grey", linestyle=":", label=f"{name}: abstain below {value:.2f} (fit on validation)"
    )
    ax.set_xlabel("coverage (share answered, most confident first)")
    ax.set_ylabel("error rate among answered")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Risk-coverage: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(risk_png, dpi=120)
    plt.close(fig)
