"""Training-time audio augmentation on the normalised log-mel: never part of an exported graph.

`SpecAugment` warps the mel axis by a random factor per clip (vocal tract length
perturbation, Jaitly & Hinton 2013: a voice with a longer or shorter vocal tract moves its
formants up or down the frequency axis) and then blanks random bands of mel channels and of
frames (SpecAugment, Park et al. 2019). Both aim at what four training voices cannot teach:
a new speaker's formants sit elsewhere, and a band or a moment may be lost to noise.

The encoder applies it only in training mode (`AudioEncoder.augment`); `mla train
--audio-augment` turns it on. It has no parameters, so a checkpoint is the same with or
without it. Random numbers come from torch's generator, which training seeds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bands(batch: int, length: int, count: int, max_width: int, device: torch.device) -> torch.Tensor:
    """[batch, length] bool: `count` bands per row, each of a width drawn from 0..max_width at a random start."""
    width = torch.randint(0, max_width + 1, (batch, count, 1), device=device)
    start = (torch.rand(batch, count, 1, device=device) * (length - width + 1)).long()
    pos = torch.arange(length, device=device).view(1, 1, -1)
    return ((pos >= start) & (pos < start + width)).any(dim=1)


class SpecAugment(nn.Module):
    """[B, 1, frames, mels] -> the same shape, warped and masked per clip in training; unchanged in eval."""

    def __init__(
        self, warp: float = 0.1, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 12
    ) -> None:
        super().__init__()
        if not 0.0 <= warp < 1.0:
            raise ValueError(f"warp must be in [0, 1), got {warp}")
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError("mask counts and widths must not be negative")
        self.warp, self.freq_masks, self.freq_width = warp, freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def warp_mels(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Channel m of the output reads channel m / factor of the input (linear interpolation, edge held)."""
        b, _, frames, mels = x.shape
        src = torch.arange(mels, device=x.device, dtype=x.dtype).view(1, -1) / factor.view(-1, 1)  # [B, mels]
        gx = (2 * src / (mels - 1) - 1).view(b, 1, mels).expand(b, frames, mels)
        gy = torch.linspace(-1, 1, frames, device=x.device, dtype=x.dtype).view(1, frames, 1).expand(b, frames, mels)
        return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, _, frames, mels = x.shape
        if self.warp > 0:
            x = self.warp_mels(x, torch.empty(b, device=x.device, dtype=x.dtype).uniform_(1 - self.warp, 1 + self.warp))
        keep = torch.ones(b, frames, mels, dtype=torch.bool, device=x.device)
        if self.freq_masks and self.freq_width:
            keep &= ~_bands(b, mels, self.freq_masks, min(self.freq_width, mels), x.device).unsqueeze(1)
        if self.time_masks and self.time_width:
            keep &= ~_bands(b, frames, self.time_masks, min(self.time_width, frames), x.device).unsqueeze(2)
        return x * keep.unsqueeze(1).to(x.dtype)  # a blanked cell is 0: the normalised log-mel's mean
