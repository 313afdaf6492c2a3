"""The convolutional log-mel front end against librosa, an independent reference.

The two compute the same mel power spectrum in float32 by different arithmetic (a direct
windowed DFT as a convolution here, an FFT in librosa), so they may differ by float32
round-off, and by how much depends on the CPU's kernels (FMA, vector width, summation
order). The bound below comes from the arithmetic, not from one machine: it holds for any
order of the float32 sums.

For a frame x (window applied, n = n_fft samples) with S = sum_n |x_n|, each real or
imaginary DFT part is a dot product of length n with coefficients of magnitude at most
1 (the rounded basis adds one more rounding), so its error is at most g(n + 1) * S, with
g(k) = k u / (1 - k u) and u = 2^-24 (Higham, Accuracy and Stability, 3.1). The power
R^2 + I^2 (R, I at most S) is then off by at most 5 g(n + 1) S^2, and a mel band, a sum of
n_fft / 2 + 1 powers with filter weights f_k in [0, 1], by at most
sum_k f_k * (5 g(n + 1) + 2 g(n / 2 + 1)) * S^2. librosa's FFT stays within the same
bound for signals without long silences (its error, about 5 log2(n) u sqrt(n) ||x||_2,
is below n u ||x||_1 for a dense frame), so the two may differ by twice that.

The power is compared, not its log: near-silent bins (1e-7 of the frame's peak) carry
round-off that is tiny in power and large in log, and the bound says how large. The
bound is a worst case, yet still far below what a real mistake costs: the test also checks
that a Hamming window or a frame shifted by one hop breaks it many times over.
"""

import math

import librosa
import numpy as np
import pytest
import torch

from training.models.frontend import LogMel, mel_filterbank

U = 2.0**-24  # float32 unit round-off


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def test_mel_filterbank_matches_librosa_htk() -> None:
    ours = mel_filterbank(16_000, 400, 64)
    ref = librosa.filters.mel(sr=16_000, n_fft=400, n_mels=64, htk=True, norm=None).T
    # Both evaluate the same closed form in float64 and round once to float32: one unit in the last place.
    np.testing.assert_allclose(ours, ref, rtol=2 * U, atol=2 * U)


def _signal(sr: int) -> np.ndarray:
    """A chirp (so neighbouring frames differ), a steady tone and noise: one second, float32."""
    rng = np.random.default_rng(0)
    t = np.arange(sr) / sr
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 1500 * t**2))
    return (chirp + 0.2 * np.sin(2 * np.pi * 2500 * t) + 0.05 * rng.normal(size=sr)).astype(np.float32)


def _frames_abs_sum(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """S per frame: sum of |windowed samples|, framed exactly as the front end frames (centred, reflect-padded)."""
    x = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (x.size - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:n_frames]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(frames * window).sum(axis=1)


def _librosa_mel(wave: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, window: str = "hann") -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=wave,
        sr=sr,
        n_fft=n_fft,
        hop_length=hop,
        n_mels=n_mels,
        power=2.0,
        htk=True,
        norm=None,
        center=True,
        pad_mode="reflect",
        window=window,
    )
    return mel.T.astype(np.float64)  # [frames, mels]


@pytest.mark.parametrize(("sr", "n_fft", "hop", "n_mels"), [(16_000, 400, 160, 64), (16_000, 512, 128, 128)])
def test_mel_power_matches_librosa_within_the_float32_bound(sr: int, n_fft: int, hop: int, n_mels: int) -> None:
    wave = _signal(sr)
    eps = 1e-6
    front = LogMel(sr, n_fft, hop, n_mels, eps=eps)
    ours_log = front(torch.from_numpy(wave)[None]).squeeze().double().numpy()
    ours = np.exp(ours_log) - eps  # back to power; exp of a float32 log is exact to about u * |log|
    ref = _librosa_mel(wave, sr, n_fft, hop, n_mels)
    assert ours.shape == ref.shape

    s2 = _frames_abs_sum(wave, n_fft, hop)[:, None] ** 2  # [frames, 1]
    band_weight = mel_filterbank(sr, n_fft, n_mels).astype(np.float64).sum(axis=0)[None, :]  # [1, mels]
    per_side = band_weight * (5 * gamma(n_fft + 1) + 2 * gamma(n_fft // 2 + 1)) * s2
    bound = 2 * per_side + 4 * U * (np.abs(ours_log) + 1) * (ours + eps)  # both sides, plus the log's own rounding
    excess = np.abs(ours - ref) / bound
    assert excess.max() <= 1.0, (
        f"mel power off by {excess.max():.2f} x the float32 bound at {np.unravel_index(excess.argmax(), excess.shape)}"
    )

    # The bound still catches real mistakes, by more than an order of magnitude.
    hamming = _librosa_mel(wave, sr, n_fft, hop, n_mels, window="hamming")
    assert (np.abs(ours - hamming) / bound).max() > 10
    shifted = np.abs(ours[1:] - ref[:-1]) / bound[1:]
    assert shifted.max() > 10


def test_front_end_uses_no_stft() -> None:
    """The module is a convolution and a matmul: nothing that would become an ONNX STFT/DFT."""
    mod = LogMel(16_000, 400, 160, 64)
    graph = torch.export.export(mod, (torch.zeros(1, 16_000),)).graph
    ops = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert not any("stft" in op or "fft" in op for op in ops), ops
    assert any("conv" in op for op in ops), ops


def _cmn(wave: torch.Tensor) -> torch.Tensor:
    return LogMel(16_000, 400, 160, 64, subtract_mean=True)(wave)[:, 0]


def test_subtracting_the_clips_mean_removes_a_gain_and_leaves_the_frames_differences() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16_000) / 16_000
    wave = (torch.sin(2 * math.pi * 440 * t * (1 + t)) + 0.1 * torch.randn(16_000, generator=g)).unsqueeze(0)
    plain = LogMel(16_000, 400, 160, 64)(wave)[:, 0]
    a, b = _cmn(wave), _cmn(0.25 * wave)  # a gain adds log(1/16) to every band of every frame
    # ... but for eps: |log(m / 16 + eps) - log(m / 16)| <= 16 eps / m, once in the entry and once in its band's mean
    bound = 2 * 16 * 1e-6 / math.exp(float(plain.min())) + 1e-4  # + float32 rounding of values up to ~10
    assert torch.allclose(a, b, atol=bound)
    assert not torch.allclose(plain, LogMel(16_000, 400, 160, 64)(0.25 * wave)[:, 0], atol=1.0)
    # what changes from frame to frame is kept: the same differences between frames as without it
    assert torch.allclose(a[:, 1:] - a[:, :-1], plain[:, 1:] - plain[:, :-1], atol=1e-3)


def test_the_padding_after_a_short_clip_barely_moves_the_mean_and_silence_becomes_zeros() -> None:
    g = torch.Generator().manual_seed(1)
    speech = 0.5 * torch.randn(6_000, generator=g)
    one = _cmn(torch.nn.functional.pad(speech, (0, 10_000)).unsqueeze(0))
    two = _cmn(torch.nn.functional.pad(speech, (0, 26_000)).unsqueeze(0))
    frames = 6_000 // 160  # the frames that hold the clip, the same in both
    assert torch.allclose(one[:, :frames], two[:, :frames], atol=1e-2)
    silent = _cmn(torch.zeros(1, 16_000))
    assert torch.count_nonzero(silent.abs() > 1e-4) == 0
