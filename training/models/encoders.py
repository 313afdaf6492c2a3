"""Per-modality encoders: raw input in, one feature vector per sample out.

Every encoder of a model emits the same feature width, so one linear head serves all.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from training.config import ModelConfig
from training.models.frontend import FrameNormalize, LogMel, RaiseLevel


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


def small_cnn(in_channels: int, width: int = 16) -> tuple[nn.Module, int]:
    """Four conv blocks and a global average pool: a few million MACs per input."""
    chans = [width, 2 * width, 4 * width, 8 * width]
    layers: list[nn.Module] = []
    c = in_channels
    for out in chans:
        layers.append(_block(c, out))
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c


def resnet18_trunk(in_channels: int) -> tuple[nn.Module, int]:
    """torchvision's ResNet-18 without its classifier (random init: no weights are downloaded)."""
    net = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net, 512


def _trunk(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    return small_cnn(in_channels) if cfg.encoder == "small" else resnet18_trunk(in_channels)


class AudioEncoder(nn.Module):
    """Waveform [B, samples] float32 -> features [B, D]."""

    dim: int

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # quiet clips raised to the training clips' level (RaiseLevel); Identity for checkpoints from before it existed
        self.level: nn.Module = nn.Identity() if cfg.audio_peak is None else RaiseLevel(cfg.audio_peak)
        self.frontend = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        self.input_norm = nn.BatchNorm2d(1)  # log-mel has no fixed scale; let the data set it
        self.trunk, self.dim = _trunk(cfg, 1)
        # training-time augmentation between preprocess and embed (training.models.augment.SpecAugment
        # when `mla train --audio-augment`); no parameters, and export calls preprocess and embed alone
        self.augment: nn.Module = nn.Identity()

    def preprocess(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform (quiet ones raised to the model's level) -> normalised log-mel [B, 1, frames, mels]; stays
        float32 in an fp16 export (the power spectrum overflows fp16, and log-mel values near 10 keep only 3
        decimals)."""
        return self.input_norm(self.frontend(self.level(wave)))

    def embed(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.trunk(logmel)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embed(self.augment(self.preprocess(wave)))


class VideoEncoder(nn.Module):
    """uint8 frames [B, T, H, W, 3] -> features [B, D], frame features averaged over time."""

    dim: int

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.normalize = FrameNormalize(cfg.video_mean, cfg.video_std)
        self.trunk, self.dim = _trunk(cfg, 3)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] -> normalised float [B, T, 3, H, W]."""
        b, t = frames.shape[:2]
        x = self.normalize(frames)
        return x.reshape(b, t, *x.shape[1:])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        feats = self.trunk(x.flatten(0, 1))  # [B * T, D]
        return feats.reshape(b, t, -1).mean(dim=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.embed(self.preprocess(frames))


# A new modality is one entry here plus its decoder in common.media.
ENCODERS: dict[str, type[AudioEncoder] | type[VideoEncoder]] = {"audio": AudioEncoder, "video": VideoEncoder}
