"""Per-modality encoders: raw input in, one feature vector per sample out.

Every encoder of a model emits the same feature width, so one linear head serves all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from torch import nn

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


def _trunk(encoder: str, in_channels: int) -> tuple[nn.Module, int]:
    return small_cnn(in_channels) if encoder == "small" else resnet18_trunk(in_channels)


def feature_width(encoder: str) -> int:
    """The feature width every encoder of this size emits (the shared head's input)."""
    return 128 if encoder == "small" else 512


class AudioEncoder(nn.Module):
    """Waveform [B, samples] float32 -> features [B, D]."""

    dim: int

    def __init__(self, encoder: str, s: Mapping[str, Any]) -> None:
        super().__init__()
        # quiet clips raised to the training clips' level (RaiseLevel); Identity for checkpoints from before it existed
        self.level: nn.Module = nn.Identity() if s["peak"] is None else RaiseLevel(s["peak"])
        self.frontend = LogMel(s["sample_rate"], s["n_fft"], s["hop_length"], s["n_mels"], subtract_mean=s["cmn"])
        self.input_norm = nn.BatchNorm2d(1)  # log-mel has no fixed scale; let the data set it
        self.trunk, self.dim = _trunk(encoder, 1)
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

    def __init__(self, encoder: str, s: Mapping[str, Any]) -> None:
        super().__init__()
        self.normalize = FrameNormalize(tuple(s["mean"]), tuple(s["std"]))
        self.trunk, self.dim = _trunk(encoder, 3)
        # training-time augmentation between preprocess and embed (training.models.augment.FrameAffine when
        # `mla train --augment video`); no parameters, and export calls preprocess and embed alone
        self.augment: nn.Module = nn.Identity()

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
        return self.embed(self.augment(self.preprocess(frames)))


class ImageEncoder(nn.Module):
    """uint8 image [B, H, W, 3] -> features [B, D]: normalised, then the trunk."""

    dim: int

    def __init__(self, encoder: str, s: Mapping[str, Any]) -> None:
        super().__init__()
        self.normalize = FrameNormalize(tuple(s["mean"]), tuple(s["std"]))
        self.trunk, self.dim = _trunk(encoder, 3)
        self.augment: nn.Module = nn.Identity()  # as VideoEncoder's (`mla train --augment image`)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W] (a clip of one frame, to FrameNormalize)."""
        return self.normalize(image.unsqueeze(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.embed(self.augment(self.preprocess(image)))


class TextEncoder(nn.Module):
    """UTF-8 bytes uint8 [B, L] (zero-padded) -> features [B, D].

    ASCII capitals are lower-cased inside the graph, each byte is embedded (byte 0, the padding, as
    zeros), and three dilated convolution blocks see byte n-grams up to 15 wide; a max over the
    positions that hold text gives the features. Misspelt words share most of their n-grams with the
    right ones, and any language's UTF-8 is bytes like any other. Lower-casing and the text mask are
    table lookups (Gather), not comparisons: every op has a kernel on each execution provider.
    """

    dim: int
    fold: torch.Tensor  # [256] int64: each byte's lower-case (A-Z -> a-z, the rest unchanged)
    present: torch.Tensor  # [256] float32: 0 for the padding byte, 1 for any other

    def __init__(self, encoder: str, s: Mapping[str, Any], embedding: int = 32) -> None:
        super().__init__()
        self.dim = width = feature_width(encoder)
        fold = torch.arange(256, dtype=torch.int64)
        fold[65:91] += 32
        self.register_buffer("fold", fold, persistent=False)
        self.register_buffer("present", (torch.arange(256) > 0).to(torch.float32), persistent=False)
        self.embedding = nn.Embedding(256, embedding, padding_idx=0)
        self.trunk = nn.Sequential(
            nn.Conv1d(embedding + 1, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, width, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, width, 3, padding=4, dilation=4),
            nn.ReLU(inplace=True),
        )
        self.norm = nn.BatchNorm1d(width)

    def preprocess(self, data: torch.Tensor) -> torch.Tensor:
        """uint8 [B, L] -> float [B, E + 1, L]: each byte's embedding, and a last channel that is 1 where there is text."""
        raw = data.to(torch.int64)
        codes = torch.index_select(self.fold, 0, raw.flatten()).view_as(raw)
        mask = torch.index_select(self.present, 0, codes.flatten()).view_as(raw).unsqueeze(1)
        return torch.cat([self.embedding(codes).transpose(1, 2), mask], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        mask = x[:, -1:, :]
        h = self.trunk(x)
        # the max over text positions: padding pushed far below any activation (ReLU's are >= 0); an empty
        # row (all padding) gives zeros
        pooled = (h - (1 - mask) * 1e4).amax(dim=2) * mask.amax(dim=2)
        return self.norm(pooled.float()).to(pooled.dtype)  # float32 statistics in an fp16 export too

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return self.embed(self.preprocess(data))
