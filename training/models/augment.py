"""Training-time augmentation, between an encoder's preprocessing and its trunk: never part of an exported graph.

`SpecAugment` warps the mel axis by a random factor per clip (vocal tract length
perturbation, Jaitly & Hinton 2013: a voice with a longer or shorter vocal tract moves its
formants up or down the frequency axis) and then blanks random bands of mel channels and of
frames (SpecAugment, Park et al. 2019). Both aim at what four training voices cannot teach:
a new speaker's formants sit elsewhere, and a band or a moment may be lost to noise. With
`stretch` it also plays each clip faster or slower by a random factor (tempo perturbation, as
in Ko et al. 2015's speed perturbation but with the pitch kept): a new speaker talks at a pace
of their own. With `tilt` it adds a random straight slope across the mel channels (louder highs
and softer lows or the reverse, as one microphone and room differ from another): a new speaker
also brings a recording chain of their own.

`FrameAffine` moves, turns, scales and shears each clip's (or image's) frames by one random
affine map: what a new hand draws differently (docs/decisions/2026-12-07-video-augmentation.md).

An encoder applies its augmentation only in training mode (`AudioEncoder.augment`,
`VideoEncoder.augment`, `ImageEncoder.augment`); `mla train --augment KIND` turns it on. Neither
has parameters, so a checkpoint is the same with or without it. Random numbers come from
torch's generator, which training seeds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _bands(batch: int, length: int, count: int, max_width: int, device: torch.device) -> torch.Tensor:
    """[batch, length] bool: `count` bands per row, each of a width drawn from 0..max_width at a random start."""
    width = torch.randint(0, max_width + 1, (batch, count, 1), device=device)
    start = (torch.rand(batch, count, 1, device=device) * (length - width + 1)).long()
    pos = torch.arange(length, device=device).view(1, 1, -1)
    return ((pos >= start) & (pos < start + width)).any(dim=1)


def _read_scaled(x: torch.Tensor, factor: torch.Tensor, axis: int) -> torch.Tensor:
    """[B, 1, frames, mels] -> the same shape, where index i along `axis` (2: frames, 3: mels) reads index
    i / factor of the input, one factor per clip (linear interpolation, the edge held past the end); the other axis
    is read as it is."""
    b, _, frames, mels = x.shape
    n = x.shape[axis]
    src = torch.arange(n, device=x.device, dtype=x.dtype).view(1, -1) / factor.view(-1, 1)  # [B, n]
    scaled = 2 * src / max(n - 1, 1) - 1
    if axis == 3:
        gx = scaled.view(b, 1, mels).expand(b, frames, mels)
        gy = torch.linspace(-1, 1, frames, device=x.device, dtype=x.dtype).view(1, frames, 1).expand(b, frames, mels)
    else:
        gy = scaled.view(b, frames, 1).expand(b, frames, mels)
        gx = torch.linspace(-1, 1, mels, device=x.device, dtype=x.dtype).view(1, 1, mels).expand(b, frames, mels)
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border", align_corners=True)


class SpecAugment(nn.Module):
    """[B, 1, frames, mels] -> the same shape, warped and masked per clip in training; unchanged in eval."""

    def __init__(
        self,
        warp: float = 0.1,
        freq_masks: int = 2,
        freq_width: int = 8,
        time_masks: int = 2,
        time_width: int = 12,
        stretch: float = 0.0,
        tilt: float = 0.0,
    ) -> None:
        """`warp`: the mel axis scaled by a factor in [1 - warp, 1 + warp]; `stretch`: the frame axis by one in
        [1 - stretch, 1 + stretch]; `tilt`: a slope from -s at the lowest mel channel to +s at the highest added to
        every frame, s uniform in [-tilt, tilt], in the normalised log-mel's units (its input normalisation turns
        natural-log units into these; version 8's multiplies them by 0.23, so 0.3 is about 6 dB). `stretch` and
        `tilt` at 0, their defaults, leave the clip as it is and draw no random number."""
        super().__init__()
        for name, value in (("warp", warp), ("stretch", stretch)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not (math.isfinite(tilt) and tilt >= 0.0):
            raise ValueError(f"tilt must be a finite number >= 0, got {tilt}")
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError("mask counts and widths must not be negative")
        self.warp, self.freq_masks, self.freq_width = warp, freq_masks, freq_width
        self.time_masks, self.time_width, self.stretch, self.tilt = time_masks, time_width, stretch, tilt

    def warp_mels(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Channel m of the output reads channel m / factor of the input (linear interpolation, edge held)."""
        return _read_scaled(x, factor, axis=3)

    def stretch_frames(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Frame t of the output reads frame t / factor of the input (linear interpolation, the last frame held past
        the end): a factor above 1 plays the clip slower, below 1 faster; the mel channels stay where they are."""
        return _read_scaled(x, factor, axis=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, _, frames, mels = x.shape
        if self.stretch > 0:
            x = self.stretch_frames(
                x, torch.empty(b, device=x.device, dtype=x.dtype).uniform_(1 - self.stretch, 1 + self.stretch)
            )
        if self.warp > 0:
            x = self.warp_mels(x, torch.empty(b, device=x.device, dtype=x.dtype).uniform_(1 - self.warp, 1 + self.warp))
        if self.tilt > 0:
            slope = torch.empty(b, device=x.device, dtype=x.dtype).uniform_(-self.tilt, self.tilt)
            x = x + slope.view(b, 1, 1, 1) * torch.linspace(-1, 1, mels, device=x.device, dtype=x.dtype).view(1, 1, 1, mels)
        keep = torch.ones(b, frames, mels, dtype=torch.bool, device=x.device)
        if self.freq_masks and self.freq_width:
            keep &= ~_bands(b, mels, self.freq_masks, min(self.freq_width, mels), x.device).unsqueeze(1)
        if self.time_masks and self.time_width:
            keep &= ~_bands(b, frames, self.time_masks, min(self.time_width, frames), x.device).unsqueeze(2)
        return x * keep.unsqueeze(1).to(x.dtype)  # a blanked cell is 0: the normalised log-mel's mean


class FrameAffine(nn.Module):
    """Normalised frames [B, T, C, H, W] (a clip) or [B, C, H, W] (an image) -> the same shape, each clip through one
    random affine map in training (every frame of a clip the same map, so its motion is kept); unchanged in eval.

    Per clip, each uniform: a turn of up to `degrees`, a scale in `scale`, a horizontal shear of up to `shear`, a
    shift of up to `shift` of the frame's width and height. What the map uncovers is filled with the clip's smallest
    value per channel (the background of a drawing on black). The ranges are the usual ones for handwritten digits,
    fixed before any training and not tuned (docs/decisions/2026-12-07-video-augmentation.md).
    """

    def __init__(
        self, degrees: float = 15.0, scale: tuple[float, float] = (0.9, 1.1), shear: float = 0.2, shift: float = 1 / 16
    ) -> None:
        super().__init__()
        if not 0.0 <= degrees <= 180.0:
            raise ValueError(f"degrees must be in [0, 180], got {degrees}")
        if not 0.0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be a range of positive factors, low first, got {scale}")
        if shear < 0 or not 0.0 <= shift < 0.5:
            raise ValueError(f"shear must not be negative and shift must be in [0, 0.5), got {shear}, {shift}")
        self.degrees, self.scale, self.shear, self.shift = degrees, scale, shear, shift

    def maps(self, clips: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[clips, 2, 3]: for each clip, where each output pixel reads the input (affine_grid's theta)."""

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.empty(clips, device=device, dtype=dtype).uniform_(low, high)

        turn = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        factor, shear = uniform(*self.scale), uniform(-self.shear, self.shear)
        cos, sin = torch.cos(turn), torch.sin(turn)
        # (turn @ shear) / scale, in affine_grid's coordinates (-1..1 across the frame)
        linear = torch.stack([torch.stack([cos, cos * shear - sin], -1), torch.stack([sin, sin * shear + cos], -1)], 1)
        linear = linear / factor.view(-1, 1, 1)
        offset = torch.stack([uniform(-2 * self.shift, 2 * self.shift), uniform(-2 * self.shift, 2 * self.shift)], 1)
        return torch.cat([linear, offset.unsqueeze(-1)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        clip = x if x.dim() == 5 else x.unsqueeze(1)
        b, t, c, h, w = clip.shape
        theta = self.maps(b, x.device, x.dtype).repeat_interleave(t, dim=0)  # one map per clip, for all its frames
        fill = clip.amin(dim=(1, 3, 4), keepdim=True)  # [B, 1, C, 1, 1]
        grid = F.affine_grid(theta, [b * t, c, h, w], align_corners=False)
        moved = F.grid_sample((clip - fill).flatten(0, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = moved.view(b, t, c, h, w) + fill
        return out if x.dim() == 5 else out.squeeze(1)
