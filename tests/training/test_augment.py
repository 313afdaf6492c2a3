"""Training-time augmentation (audio's SpecAugment, video's and image's FrameAffine): what it changes in training,
and that it changes nothing else."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ModelConfig
from training.models.augment import FrameAffine, SpecAugment


def _logmel(batch: int = 6, frames: int = 101, mels: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, 1, frames, mels) + 5.0  # no cell is 0 before masking


def test_eval_mode_returns_the_input_itself() -> None:
    x = _logmel()
    assert SpecAugment().eval()(x) is x


def test_masks_blank_whole_bands_no_wider_than_asked_and_leave_the_rest() -> None:
    x = _logmel()
    aug = SpecAugment(warp=0.0, freq_masks=2, freq_width=8, time_masks=2, time_width=12).train()
    torch.manual_seed(1)
    y = aug(x)
    assert y.shape == x.shape
    zero = (y == 0)[:, 0]  # [B, frames, mels]
    cols, rows = zero.all(dim=1), zero.all(dim=2)  # blanked mel channels, blanked frames
    assert torch.equal(zero, cols[:, None, :] | rows[:, :, None])  # every 0 lies in a blanked band
    assert torch.equal(y[~(y == 0)], x[~(y == 0)])  # and everything else is untouched
    assert int(cols.sum(dim=1).max()) <= 2 * 8
    assert int(rows.sum(dim=1).max()) <= 2 * 12
    assert cols.any()
    assert rows.any()


def test_each_clip_gets_its_own_draw() -> None:
    x = _logmel(batch=1).repeat(4, 1, 1, 1)
    torch.manual_seed(2)
    y = SpecAugment().train()(x)
    assert len({y[i].numpy().tobytes() for i in range(4)}) == 4


@pytest.mark.parametrize("factor", [1.0, 0.9, 1.1, 1.25])
def test_warp_reads_channel_m_over_factor_by_linear_interpolation(factor: float) -> None:
    x = _logmel(batch=2, frames=7, mels=16)
    y = SpecAugment().warp_mels(x, torch.full((2,), factor))
    src = np.arange(16) / factor
    want = np.stack([[np.interp(src, np.arange(16), row) for row in clip[0]] for clip in x.numpy()])[:, None]
    scale = float(x.abs().max())
    np.testing.assert_allclose(y.numpy(), want, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("factor", [1.0, 0.9, 1.1, 1.25])
def test_stretch_reads_frame_t_over_factor_and_holds_the_last_frame(factor: float) -> None:
    x = _logmel(batch=2, frames=21, mels=5)
    y = SpecAugment().stretch_frames(x, torch.full((2,), factor))
    src = np.arange(21) / factor  # np.interp holds the last value past the end, as border padding does
    want = np.stack([np.stack([np.interp(src, np.arange(21), col) for col in clip[0].T], axis=1) for clip in x.numpy()])
    scale = float(x.abs().max())
    np.testing.assert_allclose(y.numpy(), want[:, None], rtol=0, atol=1e-5 * scale)


def test_stretch_off_draws_no_random_number_so_the_older_recipes_draws_are_unchanged() -> None:
    x = _logmel()
    torch.manual_seed(3)
    plain = SpecAugment().train()(x)
    after_plain = torch.rand(1)
    torch.manual_seed(3)
    off = SpecAugment(stretch=0.0).train()(x)
    assert torch.equal(plain, off)
    assert torch.equal(torch.rand(1), after_plain)
    torch.manual_seed(3)
    assert not torch.equal(SpecAugment(stretch=0.1).train()(x), plain)


def test_tilt_adds_one_straight_slope_per_clip_within_the_range() -> None:
    x = _logmel(batch=64, frames=9, mels=16)
    torch.manual_seed(5)
    y = SpecAugment(warp=0.0, freq_masks=0, time_masks=0, tilt=0.3).train()(x)
    added = (y - x)[:, 0].double()  # [B, frames, mels]
    ulp = 2.0**-20  # float32's spacing for values under 16 (these are 5 give or take 4): y - x rounds within one
    torch.testing.assert_close(added, added[:, :1].expand_as(added), rtol=0, atol=2 * ulp)  # the same in every frame
    slope = added[:, 0, -1]  # the highest channel gets +s, the lowest -s, straight between
    want = slope.view(-1, 1) * torch.linspace(-1, 1, 16, dtype=torch.float64).view(1, -1)
    torch.testing.assert_close(added[:, 0], want, rtol=0, atol=2 * ulp)
    assert float(slope.abs().max()) <= 0.3 + 1e-6
    assert float(slope.min()) < -0.1 < 0.1 < float(slope.max())  # both signs drawn across 64 clips
    torch.manual_seed(5)
    plain = SpecAugment(warp=0.0, freq_masks=0, time_masks=0).train()(x)
    assert torch.equal(plain, x)  # tilt 0 (the default) adds nothing


def test_stretch_moves_a_clips_onset_by_its_own_factor_within_the_range() -> None:
    """One pulse at frame 40 of each of 64 clips: after stretching it sits between frames 36 and 44 (0.9 and 1.1
    times 40), and the clips do not all land on the same frame."""
    x = torch.zeros(64, 1, 101, 4)
    x[:, :, 40] = 1.0
    torch.manual_seed(4)
    y = SpecAugment(warp=0.0, freq_masks=0, time_masks=0, stretch=0.1).train()(x)
    peak = y[:, 0, :, 0].argmax(dim=1)
    assert int(peak.min()) >= 36
    assert int(peak.max()) <= 44
    assert len(set(peak.tolist())) > 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="warp"):
        SpecAugment(warp=1.0)
    with pytest.raises(ValueError, match="stretch"):
        SpecAugment(stretch=-0.1)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tilt"):
            SpecAugment(tilt=bad)
    with pytest.raises(ValueError, match="negative"):
        SpecAugment(freq_width=-1)


@pytest.mark.parametrize("modality", ["audio", "video", "image"])
def test_the_encoder_applies_it_in_training_only_and_the_checkpoint_is_the_same(modality: str) -> None:
    """Each kind's augmentation, on its own encoder: eval and export (preprocess then embed) never see it."""
    from common.modalities import kind
    from training.models.classifier import resolve

    cfg = ModelConfig(labels=[str(d) for d in range(10)], modalities=[modality])
    k, s = kind(modality), cfg.settings(modality)
    plain, augmented = resolve(k.encoder_class)(cfg.encoder, s), resolve(k.encoder_class)(cfg.encoder, s)
    augmented.load_state_dict(plain.state_dict())
    augmented.augment = resolve(str(k.augmentation_class))()
    assert plain.state_dict().keys() == augmented.state_dict().keys()  # no parameters, no buffers
    dtype, shape = k.input(s)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, *shape), dtype=torch.uint8) if dtype == "uint8" else torch.randn(4, *shape)
    plain.eval(), augmented.eval()
    with torch.no_grad():
        torch.testing.assert_close(augmented(x), plain(x), rtol=0, atol=0)
        # what export traces: preprocess then embed, never the augmentation
        torch.testing.assert_close(augmented.embed(augmented.preprocess(x)), plain(x), rtol=0, atol=0)
    plain.train(), augmented.train()
    with torch.no_grad():
        assert not torch.allclose(augmented(x), plain(x))


def test_mla_train_audio_augment_is_recorded_and_changes_training(tiny_demo: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(method="mla", epochs=1, batch_size=32, workers=0, max_batches=2, owm_alpha=10.0)
    train(f"csv:{tiny_demo}", tmp_path / "plain", cfg)
    args = ["train", "--data", f"csv:{tiny_demo}", "--out", str(tmp_path / "augmented"), "--epochs", "1", "--batch-size", "32"]
    args += ["--workers", "0", "--max-batches", "2", "--owm-alpha", "10", "--augment", "audio"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = {a: torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for a, d in ((False, "plain"), (True, "augmented"))}
    assert runs[True]["train_config"]["augment"] == ["audio"]
    assert runs[False]["train_config"]["augment"] == []
    assert runs[True]["state_dict"].keys() == runs[False]["state_dict"].keys()
    # same seed, same batches: only the augmentation differs, and it moved the audio encoder
    audio = [k for k in runs[True]["state_dict"] if k.startswith("encoders.audio.trunk") and k.endswith("weight")]
    assert audio
    assert any(not torch.equal(runs[True]["state_dict"][k], runs[False]["state_dict"][k]) for k in audio)


def test_mla_train_video_augment_moves_the_video_encoder(tiny_demo: Path, tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.train import train

    runs = {}
    for name, augment in (("plain", []), ("augmented", ["video"])):
        cfg = TrainConfig(method="mla", epochs=1, batch_size=32, workers=0, max_batches=2, owm_alpha=10.0, augment=augment)
        train(f"csv:{tiny_demo}", tmp_path / name, cfg)
        runs[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
    assert runs["augmented"]["train_config"]["augment"] == ["video"]
    plain, augmented = runs["plain"]["state_dict"], runs["augmented"]["state_dict"]
    video = [k for k in plain if k.startswith("encoders.video.trunk") and k.endswith("weight")]
    assert video
    assert any(not torch.equal(augmented[k], plain[k]) for k in video)


def test_mla_train_augment_set_reaches_the_augmentation_and_changes_training(tiny_demo: Path, tmp_path: Path) -> None:
    """`--augment-set audio.stretch=0.1` is recorded, and the run differs from one without it (same seed, same
    batches): the setting reached the module that trains."""
    from typer.testing import CliRunner

    from cli.main import app

    states = {}
    for name, extra in (("plain", []), ("stretched", ["--augment-set", "audio.stretch=0.1"])):
        args = ["train", "--data", f"csv:{tiny_demo}", "--out", str(tmp_path / name), "--epochs", "1", "--batch-size", "32"]
        args += ["--workers", "0", "--max-batches", "2", "--owm-alpha", "10", "--augment", "audio", *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        states[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
    assert states["stretched"]["train_config"]["augment_settings"] == {"audio": {"stretch": 0.1}}
    assert states["plain"]["train_config"]["augment_settings"] == {}
    audio = [k for k in states["plain"]["state_dict"] if k.startswith("encoders.audio.trunk") and k.endswith("weight")]
    assert any(not torch.equal(states["stretched"]["state_dict"][k], states["plain"]["state_dict"][k]) for k in audio)


@pytest.mark.parametrize(
    ("settings", "augment", "message"),
    [
        ({"audio": {"pace": 0.1}}, ["audio"], "the audio augmentation \\(SpecAugment\\) does not take .*pace"),
        ({"audio": {"stretch": "fast"}}, ["audio"], "the audio augmentation \\(SpecAugment\\) does not take .*fast"),
        ({"audio": {"stretch": 1.5}}, ["audio"], "stretch must be in"),
        ({"audio": {"stretch": 0.1}}, [], "augmentation settings for audio, whose augmentation is not on"),
    ],
)
def test_bad_augmentation_settings_are_refused_before_training(
    tiny_demo: Path, tmp_path: Path, settings: dict, augment: list[str], message: str
) -> None:
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(epochs=1, workers=0, max_batches=1, owm_alpha=10.0, augment=augment, augment_settings=settings)
    with pytest.raises(ValueError, match=message):
        train(f"csv:{tiny_demo}", tmp_path / "run", cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_augment_set_that_is_not_modality_key_value_is_a_clear_cli_error(tiny_demo: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    args = ["train", "--data", f"csv:{tiny_demo}", "--out", str(tmp_path / "run"), "--augment", "audio"]
    result = CliRunner().invoke(app, [*args, "--augment-set", "stretch=0.1"])
    assert result.exit_code == 2
    assert "--augment-set takes MODALITY.KEY=VALUE, as audio.stretch=0.1" in result.output
    assert not (tmp_path / "run").exists()


def test_audio_augment_without_an_audio_encoder_is_refused_before_training(tiny_demo: Path, tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(method="mla", epochs=1, batch_size=32, workers=0, max_batches=1, owm_alpha=10.0, augment=["audio"])
    with pytest.raises(ValueError, match="augment names audio, which this model does not have"):
        train(f"csv:{tiny_demo}", tmp_path / "run", cfg, model_overrides={"modalities": ["video"]})
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_run_saved_with_the_older_flag_reads_as_the_list() -> None:
    from training.config import TrainConfig

    assert TrainConfig.from_dict({"method": "mla", "audio_augment": True}).augment == ["audio"]
    assert TrainConfig.from_dict({"method": "mla", "audio_augment": False}).augment == []
    assert TrainConfig.from_dict(TrainConfig(augment=["audio"]).to_dict()) == TrainConfig(augment=["audio"])


def test_a_kind_without_augmentation_is_refused_before_training(
    tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.modalities.video import Video
    from training.config import TrainConfig
    from training.train import train

    monkeypatch.setattr(Video, "augmentation_class", None)
    cfg = TrainConfig(method="mla", epochs=1, batch_size=32, workers=0, max_batches=1, owm_alpha=10.0, augment=["video"])
    with pytest.raises(ValueError, match="the video kind has no training-time augmentation"):
        train(f"csv:{tiny_demo}", tmp_path / "run", cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _clip(batch: int = 3, frames: int = 4, size: int = 32) -> torch.Tensor:
    """Normalised clips [B, T, 3, H, W] as the video encoder's preprocess makes them: a bright square on black."""
    torch.manual_seed(0)
    x = torch.full((batch, frames, 3, size, size), -2.0)
    for i in range(frames):
        x[:, i, :, 10 + i : 18 + i, 12:20] = 2.0
    return x


def test_frame_affine_in_eval_mode_returns_the_input_itself() -> None:
    x = _clip()
    assert FrameAffine().eval()(x) is x


def test_frame_affine_with_every_range_closed_is_the_identity() -> None:
    x = _clip() + 0.1 * torch.randn(3, 4, 3, 32, 32)
    same = FrameAffine(degrees=0.0, scale=(1.0, 1.0), shear=0.0, shift=0.0).train()
    # the identity map samples each pixel's own centre: bilinear weights of exactly 1 and 0
    torch.testing.assert_close(same(x), x, rtol=0, atol=1e-5)


def test_frame_affine_moves_every_frame_of_a_clip_alike_and_clips_apart() -> None:
    still = _clip(batch=4)[:, :1].expand(4, 4, 3, 32, 32).contiguous()  # four clips, each one frame repeated
    torch.manual_seed(1)
    y = FrameAffine().train()(still)
    assert y.shape == still.shape
    for i in range(1, 4):
        torch.testing.assert_close(y[:, i], y[:, 0], rtol=0, atol=0)
    assert not torch.allclose(y[0, 0], y[1, 0])
    assert not torch.allclose(y[0, 0], still[0, 0])


def test_frame_affine_fills_what_it_uncovers_with_the_background() -> None:
    x = _clip()
    torch.manual_seed(2)
    y = FrameAffine(degrees=45.0, shift=0.25).train()(x)
    # nothing darker than the background appears, nothing brighter than the strokes
    assert float(y.min()) >= -2.0 - 1e-5
    assert float(y.max()) <= 2.0 + 1e-5
    flat = torch.full((2, 4, 3, 32, 32), -2.0)
    torch.testing.assert_close(FrameAffine(degrees=45.0, shift=0.25).train()(flat), flat, rtol=0, atol=1e-6)


def test_frame_affine_scales_as_asked() -> None:
    """A scale of 2 reads the input at half the distance from the centre: the square's area grows four times."""
    x = torch.full((1, 1, 3, 64, 64), -2.0)
    x[..., 28:36, 28:36] = 2.0  # 8 x 8 at the centre
    y = FrameAffine(degrees=0.0, scale=(2.0, 2.0), shear=0.0, shift=0.0).train()(x)
    bright = float(((y[0, 0, 0] + 2.0) / 4.0).sum())  # area in pixels, partial pixels counted in part
    assert abs(bright - 256.0) <= 16.0  # 16 x 16, give or take the bilinear edge (half a pixel all round: 64 / 4)


def test_frame_affine_takes_an_image_batch_too() -> None:
    x = _clip()[:, 0]
    torch.manual_seed(3)
    y = FrameAffine().train()(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x)


def test_frame_affine_refuses_ranges_that_mean_nothing() -> None:
    with pytest.raises(ValueError, match="degrees"):
        FrameAffine(degrees=-1.0)
    with pytest.raises(ValueError, match="scale"):
        FrameAffine(scale=(1.1, 0.9))
    with pytest.raises(ValueError, match="shift"):
        FrameAffine(shift=0.5)
