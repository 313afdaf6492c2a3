"""The multimodal classifier: per-modality encoders and a shared linear head."""

from training.models.classifier import MultimodalClassifier, build_model

__all__ = ["MultimodalClassifier", "build_model"]
