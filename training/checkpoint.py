"""A checkpoint is a plain dict that carries its own configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.config import ModelConfig
from training.models import MultimodalClassifier, build_model


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not one of ours."""


CHECKPOINT_NAME = "checkpoint.pt"  # the best validation epoch: what export and evaluate read
LAST_NAME = "last.pt"  # the latest epoch with optimiser, projection and RNG states: what --resume reads
REQUIRED_KEYS = ("format", "model_config", "train_config", "method", "state_dict")


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not an mla-serve checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> MultimodalClassifier:
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        model = build_model(cfg)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint does not match its model config: {exc}") from exc
    return model.eval()
