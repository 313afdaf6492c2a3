"""Training curves: per-modality validation accuracy per epoch."""

from __future__ import annotations

import json
from pathlib import Path


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
