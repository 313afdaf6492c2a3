"""The audio branch's input level: a clip quieter than the training clips is raised to their level inside the model
(RaiseLevel), so that how quietly it was recorded does not matter; a louder one passes unchanged.

Scaling a float32 signal by a power of two is exact (short of overflow and subnormals), and so
is every step of raising it on the scaled signal: its peak scales by the same power, the gain
peak / top divides by it exactly (correct rounding commutes with powers of two), and the
product gives back the very same floats. So a quiet clip sent 8 or 4096 times quieter still
must give bit-identical features, on any CPU: the tests below ask for equality, not closeness.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import ModelConfig
from training.models.encoders import AudioEncoder
from training.models.frontend import RaiseLevel

LEVELS = (2.0**-12, 2.0**-3, 1.0)


def _waves(rows: int = 3, samples: int = 16_000, peak: float = 0.5) -> torch.Tensor:
    """Noise whose rows peak at `peak` (0.5: under the 0.9 the level step raises to)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, samples))
    return torch.from_numpy((peak * x / np.abs(x).max(axis=1, keepdims=True)).astype(np.float32))


@pytest.mark.parametrize("level", LEVELS)
def test_a_quiet_clip_gives_the_same_floats_at_any_level(level: float) -> None:
    raise_level = RaiseLevel(0.9)
    waves = _waves()
    assert torch.equal(raise_level(waves * level), raise_level(waves))
    top = raise_level(waves).abs().amax(dim=1)
    assert torch.allclose(top, torch.full_like(top, 0.9), rtol=3 * 2.0**-24, atol=0)  # 0.9 within three roundings


def test_a_clip_at_the_training_level_or_louder_passes_unchanged() -> None:
    raise_level = RaiseLevel(0.9)
    for peak in (0.9, 0.97, 1.0):
        waves = _waves(peak=peak)
        assert torch.equal(raise_level(waves), waves), peak


def test_each_row_is_raised_alone_and_silence_stays_silent() -> None:
    raise_level = RaiseLevel(0.9, floor=1e-4)
    waves = _waves(2)
    quiet = torch.zeros(1, waves.shape[1])
    quiet[0, 100] = 1e-6  # below the floor: raised as if its peak were the floor
    batch = torch.cat([waves[:1] * 0.01, torch.zeros(1, waves.shape[1]), quiet, waves[1:] * 2])
    out = raise_level(batch)
    assert torch.equal(out[0], raise_level(waves[:1] * 0.01)[0])  # a row's gain comes from that row alone
    assert torch.equal(out[3], waves[1] * 2)  # a loud row beside quiet ones is left alone
    assert torch.count_nonzero(out[1]) == 0  # digital silence stays silence
    assert out[2, 100].item() == pytest.approx(1e-6 * 0.9 / 1e-4, rel=1e-6)  # at most 9,000 times louder
    padded = torch.cat([waves[:1], torch.zeros(1, 4000)], dim=1)  # zero padding does not move the peak
    assert torch.equal(raise_level(padded)[:, : waves.shape[1]], raise_level(waves[:1]))
    with pytest.raises(ValueError, match="peak"):
        RaiseLevel(1.5)


@pytest.mark.parametrize("level", LEVELS)
def test_the_audio_encoder_hears_a_quiet_clip_at_one_level(level: float) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.for_encoder("small", [str(i) for i in range(10)], modalities=["audio"])
    assert cfg.settings("audio")["peak"] == 0.9  # on for every model trained now
    enc = AudioEncoder(cfg.encoder, cfg.settings("audio")).eval()
    waves = _waves()
    with torch.no_grad():
        assert torch.equal(enc(waves * level), enc(waves))


def test_a_checkpoint_from_before_the_level_step_keeps_feeding_the_wave_as_it_is() -> None:
    # a checkpoint's model config as saved before 2026-12-05: flat fields, no audio_peak
    saved = {
        "encoder": "small", "labels": ["a", "b"], "modalities": ["audio", "video"], "shared_head": True,
        "sample_rate": 16_000, "clip_samples": 16_000, "n_fft": 400, "hop_length": 160, "n_mels": 64,
        "video_frames": 4, "video_size": 32, "video_mean": [0.5, 0.5, 0.5], "video_std": [0.25, 0.25, 0.25],
    }  # fmt: skip
    cfg = ModelConfig.from_dict(saved)
    assert cfg.settings("audio")["peak"] is None
    assert cfg.settings("video") == {"frames": 4, "size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    torch.manual_seed(0)
    enc = AudioEncoder(cfg.encoder, cfg.settings("audio")).eval()
    waves = _waves()
    with torch.no_grad():
        assert torch.equal(enc.preprocess(waves), enc.input_norm(enc.frontend(waves)))  # no level step at all
        assert not torch.allclose(enc.preprocess(waves * 2.0**-3), enc.preprocess(waves))  # so the level shows
    with pytest.raises(ValueError, match="peak"):
        ModelConfig.for_encoder("small", ["a", "b"], modalities=["audio"], inputs={"audio": {"peak": 0.0}})
