"""Encoders in a ModuleDict keyed by modality, and the head(s) they share."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from training.config import ModelConfig
from common.modalities import kind


def resolve(name: str) -> Any:
    """A kind's torch class from its "module:Class" name (common.modalities: the served packages name it, never import it)."""
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {name!r}: {exc}") from exc


class MultimodalClassifier(nn.Module):
    """`forward({modality: input})` returns `{modality: (features, logits)}` for the modalities given."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        encoders = {m: resolve(kind(m).encoder_class)(cfg.encoder, cfg.settings(m)) for m in cfg.modalities}
        self.encoders = nn.ModuleDict(encoders)
        dims = {enc.dim for enc in encoders.values()}
        if len(dims) != 1:
            raise ValueError(f"encoders disagree on feature width: {dims}")
        self.feature_dim: int = dims.pop()
        names = ["shared"] if cfg.shared_head else list(cfg.modalities)
        self.heads = nn.ModuleDict({k: nn.Linear(self.feature_dim, cfg.n_classes) for k in names})

    def head(self, modality: str) -> nn.Linear:
        """The linear head that scores `modality`'s features (the shared one when there is one)."""
        key = "shared" if self.cfg.shared_head else modality
        return self.heads[key]  # type: ignore[return-value]

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for m, x in inputs.items():
            feats = self.encoders[m](x)
            out[m] = (feats, self.head(m)(feats))
        return out


class SingleModality(nn.Module):
    """One modality's path, raw input to float32 logits: what gets exported as one ONNX graph.

    With `features=True` it also returns the encoder's penultimate features (what the shared head scores),
    the graph's second output, which the out-of-distribution detector reads (common.ood).

    With `half=True` the trunk runs in fp16; the stem before it (log-mel and its
    normalisation, or frame normalisation) and the linear head stay float32, where fp16
    would overflow or round the logits. Give it a copy of the model: it converts it.
    """

    def __init__(self, model: MultimodalClassifier, modality: str, half: bool = False, features: bool = False) -> None:
        super().__init__()
        self.with_features = features  # forward returns (logits, the encoder's features) instead of logits
        encoder = model.encoders[modality]
        if not (callable(getattr(encoder, "preprocess", None)) and callable(getattr(encoder, "embed", None))):
            raise TypeError(f"{modality}: {type(encoder).__name__} has no preprocess/embed split")
        self.encoder: Any = encoder  # any kind's encoder: preprocess, then embed (checked above)
        self.head = model.head(modality)
        self.half_precision = half
        if half:
            self.encoder.trunk.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder.preprocess(x)
        feats = self.encoder.embed(z.half()).float() if self.half_precision else self.encoder.embed(z)
        logits = self.head(feats)
        return (logits, feats) if self.with_features else logits


def build_model(cfg: ModelConfig) -> MultimodalClassifier:
    return MultimodalClassifier(cfg)
