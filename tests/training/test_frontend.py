"""The convolutional log-mel front end against librosa, an independent reference."""

import librosa
import numpy as np
import pytest
import torch

from training.models.frontend import LogMel, mel_filterbank


def test_mel_filterbank_matches_librosa_htk() -> None:
    ours = mel_filterbank(16_000, 400, 64)
    ref = librosa.filters.mel(sr=16_000, n_fft=400, n_mels=64, htk=True, norm=None).T
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize(("sr", "n_fft", "hop", "n_mels"), [(16_000, 400, 160, 64), (16_000, 512, 128, 128)])
def test_log_mel_matches_librosa(sr: int, n_fft: int, hop: int, n_mels: int) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(sr) / sr
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t) + 0.05 * rng.normal(size=sr)).astype(
        np.float32
    )
    ref = librosa.feature.melspectrogram(
        y=wave, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=2.0, htk=True, norm=None, center=True, pad_mode="reflect"
    )
    ref_log = np.log(ref + 1e-6).T  # [frames, mels]
    ours = LogMel(sr, n_fft, hop, n_mels)(torch.from_numpy(wave)[None]).squeeze().numpy()
    assert ours.shape == ref_log.shape
    np.testing.assert_allclose(ours, ref_log, atol=2e-3)


def test_front_end_uses_no_stft() -> None:
    """The module is a convolution and a matmul: nothing that would become an ONNX STFT/DFT."""
    mod = LogMel(16_000, 400, 160, 64)
    graph = torch.export.export(mod, (torch.zeros(1, 16_000),)).graph
    ops = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert not any("stft" in op or "fft" in op for op in ops), ops
    assert any("conv" in op for op in ops), ops
