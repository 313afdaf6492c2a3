"""Preprocessing that lives inside the model, so it ships inside the ONNX graphs.

The log-mel front end is a Conv1d with a fixed windowed Fourier basis and a constant mel
matrix, not torch.stft: ONNX's STFT/DFT ops have no CUDA kernel in ONNX Runtime, and a
graph with one copies to the host and back on every call (../shared/device/README.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + f / 700.0)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """Triangular HTK-scale filters without area normalisation: [n_fft // 2 + 1, n_mels]."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = np.linspace(hz_to_mel(np.array(f_min)), hz_to_mel(np.array(f_max)), n_mels + 2)
    hz_pts = mel_to_hz(mel_pts)
    lower = (fft_freqs[:, None] - hz_pts[None, :-2]) / (hz_pts[1:-1] - hz_pts[:-2])[None, :]
    upper = (hz_pts[None, 2:] - fft_freqs[:, None]) / (hz_pts[2:] - hz_pts[1:-1])[None, :]
    return np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)


class LogMel(nn.Module):
    """Waveform [B, samples] -> log-mel [B, 1, frames, n_mels] (centred, reflect-padded frames).

    With `subtract_mean`, each clip's own mean log-mel per mel band is subtracted (cepstral mean normalisation, as
    speech recognisers normalise each utterance): what a voice or a channel adds to every frame alike goes, what
    changes from frame to frame stays. The mean is over frames weighted by their mel power, so the zero padding
    after a short clip (the floor, log eps) counts for next to nothing; a silent clip becomes all zeros."""

    cos_basis: torch.Tensor  # [n_freq, 1, n_fft]: windowed cosines (real part)
    sin_basis: torch.Tensor  # [n_freq, 1, n_fft]: windowed negative sines (imaginary part)
    mel: torch.Tensor  # [n_freq, n_mels]

    def __init__(
        self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, eps: float = 1e-6, subtract_mean: bool = False
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.eps, self.subtract_mean = n_fft, hop_length, eps, subtract_mean
        n_freq = n_fft // 2 + 1
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)[:, None]
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)  # periodic Hann, as torch.hann_window
        angle = 2 * math.pi * k * n / n_fft
        # Two convolutions rather than one split in two: a multi-output Split trips the fp16 converter.
        self.register_buffer("cos_basis", (torch.cos(angle) * window).float().unsqueeze(1), persistent=False)
        self.register_buffer("sin_basis", (-torch.sin(angle) * window).float().unsqueeze(1), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect")
        real = F.conv1d(x, self.cos_basis, stride=self.hop_length)  # [B, n_freq, frames]
        imag = F.conv1d(x, self.sin_basis, stride=self.hop_length)
        power = real * real + imag * imag
        mel = torch.matmul(power.transpose(1, 2), self.mel)  # [B, frames, n_mels]
        logmel = torch.log(mel + self.eps)
        if self.subtract_mean:
            weight = mel.mean(dim=2, keepdim=True) + self.eps  # [B, frames, 1]: each frame's mel power
            logmel = logmel - (weight * logmel).mean(dim=1, keepdim=True) / weight.mean(dim=1, keepdim=True)
        return logmel.unsqueeze(1)


class RaiseLevel(nn.Module):
    """Waveform [B, samples] -> the same, each row quieter than `peak` scaled up so that its largest |sample| is
    `peak`; louder rows pass unchanged.

    The audio branch learns from clips of one level (AV-digits writes every clip at a peak of 0.9 of full
    scale, and resampling only adds to it), and a log-mel shifts with the input's level and sinks into its
    floor when quiet, so a recording made quieter is out of what it learned. Raised to `peak`, every
    recording reaches the model with a peak between `peak` and full scale, where its training clips lie;
    on those clips the step does nothing. Rows whose peak is under `floor` (about three steps of a 16-bit
    file: silence) are raised as if it were `floor`, so that silence is not amplified into full-scale
    noise. Zero padding does not move a row's peak.
    """

    def __init__(self, peak: float, floor: float = 1e-4) -> None:
        super().__init__()
        if not 0 < peak <= 1:
            raise ValueError(f"peak must be in (0, 1], got {peak}")
        self.peak, self.floor = peak, floor

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        top = wave.abs().amax(dim=1, keepdim=True).clamp_min(self.floor)
        return wave * (self.peak / top).clamp_min(1.0)


class FrameNormalize(nn.Module):
    """uint8 frames [B, T, H, W, 3] -> float [B * T, 3, H, W], scaled to [0, 1] and standardised."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = frames.shape
        x = frames.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std
