"""Typed configs. A checkpoint carries both as plain dicts, so it rebuilds itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from common.media import AudioSpec, VideoSpec

MODALITIES = ("audio", "video")
# alpha over unit-norm directions: after N folds of one direction its gain is alpha / (alpha + N), and a
# run folds ~10^3 batch means, so this spans a hard projection (1) to a mild one (1000).
OWM_ALPHA_GRID = (1.0, 10.0, 100.0, 1000.0)
METHODS = ("mla", "joint", "unimodal")
ENCODERS = ("small", "resnet18")


@dataclass
class ModelConfig:
    encoder: str = "small"  # "small" (minutes on 2 CPU cores) or "resnet18" (the paper's CREMA-D setting)
    labels: list[str] = field(default_factory=list)  # class names; the head has len(labels) outputs
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # encoders to build
    shared_head: bool = True  # one linear head for every modality (mla, joint); False: one per modality
    # audio front end: waveform -> log-mel, inside the model (and so inside the ONNX graph)
    sample_rate: int = 16_000  # Hz the waveform is resampled to
    clip_samples: int = 16_000  # waveform length after padding/cropping
    n_fft: int = 400  # window length (25 ms at 16 kHz)
    hop_length: int = 160  # 10 ms hop
    n_mels: int = 64  # mel bands
    # a clip whose peak |sample| is under this is raised to it before the log-mel, louder ones pass unchanged
    # (training.models.frontend.RaiseLevel); None: fed at its own level (checkpoints from before 2026-12-05)
    audio_peak: float | None = 0.9
    # video: uint8 RGB frames, normalised inside the model
    video_frames: int = 4  # frames sampled uniformly per clip
    video_size: int = 32  # frames are resized to video_size x video_size
    video_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    video_std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {', '.join(ENCODERS)}")
        if self.audio_peak is not None and not 0 < self.audio_peak <= 1:
            raise ValueError(f"audio_peak must be in (0, 1] or None, got {self.audio_peak}")

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def audio_spec(self) -> AudioSpec:
        return AudioSpec(sample_rate=self.sample_rate, samples=self.clip_samples)

    @property
    def video_spec(self) -> VideoSpec:
        return VideoSpec(frames=self.video_frames, height=self.video_size, width=self.video_size)

    @classmethod
    def for_encoder(cls, encoder: str, labels: list[str], **overrides: Any) -> ModelConfig:
        """Defaults per encoder size; explicit overrides win."""
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
        base: dict[str, Any] = {"encoder": encoder, "labels": list(labels)}
        if encoder == "resnet18":
            # The paper's CREMA-D setting: 3 frames at 224 px, ImageNet statistics, 128 mels.
            base.update(
                clip_samples=4 * 16_000,
                n_mels=128,
                video_frames=3,
                video_size=224,
                video_mean=(0.485, 0.456, 0.406),
                video_std=(0.229, 0.224, 0.225),
            )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d.setdefault("audio_peak", None)  # saved before the field existed: those models never normalised the level
        d["video_mean"] = tuple(d["video_mean"])
        d["video_std"] = tuple(d["video_std"])
        return cls(**d)


@dataclass
class TrainConfig:
    method: str = "mla"  # mla | joint | unimodal
    epochs: int = 12  # passes over the training split
    batch_size: int = 64  # per process
    lr: float = 0.05  # peak SGD learning rate, cosine-decayed to lr/50
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # MLA: the projection's alpha in P <- P - kk^T / (alpha + r^T P r) over unit-norm mean features r;
    # None ("auto"): one run per value of OWM_ALPHA_GRID, the best by validation accuracy kept
    owm_alpha: float | None = None
    owm_project: bool = True  # MLA: project the shared head's gradient (off only for ablations)
    audio_augment: bool = False  # warp and mask the training audio's log-mel (training.models.augment)
    seed: int = 0
    workers: int = 1  # DataLoader worker processes
    max_batches: int | None = None  # cap batches per epoch (tests, quick looks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
