"""Outlier exposure (`mla train --outliers`): its loss, that every method trains on it, and bad outlier lists refused."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ModelConfig, TrainConfig
from training.data.specs import DataError, read_outliers
from training.data.writers import write_audio
from training.distributed import World
from training.methods.mla import MLATrainer
from training.models import build_model


def _noise_outliers(folder: Path, n: int = 48, seed: int = 0) -> Path:
    """n clips of white noise, one second at 8 kHz, listed in folder/outliers.csv (an `audio` column only)."""
    rng = np.random.default_rng(seed)
    (folder / "media").mkdir(parents=True)
    rows = []
    for i in range(n):
        write_audio(
            folder / "media" / f"{i}.wav",
            (rng.uniform(0.1, 0.9) * rng.standard_normal(8000)).clip(-1, 1).astype(np.float32),
            8000,
        )
        rows.append({"audio": f"media/{i}.wav", "note": "white noise"})
    path = folder / "outliers.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["audio", "note"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_outlier_loss_is_least_where_the_output_is_uniform() -> None:
    model = build_model(ModelConfig(labels=[str(d) for d in range(10)], modalities=["audio"]))
    trainer = MLATrainer(model, TrainConfig(owm_alpha=10.0, outlier_weight=0.5), World(), 1)
    flat = torch.zeros(4, 10, requires_grad=True)
    loss = trainer.outlier_loss(flat)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * math.log(10))  # the cross-entropy from uniform to uniform: log K
    assert flat.grad is not None
    assert float(flat.grad.abs().max()) < 1e-7
    sure = torch.tensor([[8.0] + [0.0] * 9])
    assert float(trainer.outlier_loss(sure)) > 0.5 * math.log(10) + 1.0  # a confident output costs more


def test_joint_outlier_loss_averages_only_the_outliers_a_step_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch with audio alone and outliers half of which have video alone: the joint step's outlier term is the
    mean over the two audio outliers; the video-only ones (summed logits 0, uniform, no gradient) do not dilute it."""
    from training.methods.joint import JointTrainer

    cfg = ModelConfig(labels=[str(d) for d in range(10)], modalities=["audio", "video"])
    model = build_model(cfg)
    trainer = JointTrainer(model, TrainConfig(method="joint", outlier_weight=0.5), World(), 1)
    torch.manual_seed(0)
    a, v = cfg.spec("audio"), cfg.spec("video")
    audio = torch.randn(4, a.samples)
    video = torch.randint(0, 255, (4, v.frames, v.height, v.width, 3), dtype=torch.uint8)
    batch = {"label": torch.arange(4), "audio": audio, "audio_present": torch.ones(4, dtype=torch.bool),
             "video": video, "video_present": torch.zeros(4, dtype=torch.bool)}  # fmt: skip
    outliers = {"label": torch.full((4,), -1), "audio": audio.flip(0), "audio_present": torch.tensor([True, True, False, False]),
                "video": video, "video_present": torch.tensor([False, False, True, True])}  # fmt: skip
    seen: list[torch.Tensor] = []
    real = trainer.outlier_loss

    def spy(logits: torch.Tensor) -> torch.Tensor:
        seen.append(logits.detach())
        return real(logits)

    monkeypatch.setattr(trainer, "outlier_loss", spy)
    losses = trainer.step(batch, outliers)
    assert [s.shape[0] for s in seen] == [2]  # the two audio outliers, not all four
    assert losses["joint_outliers"] == pytest.approx(float(real(seen[0])))
    assert losses["joint_outliers"] > 0.5 * math.log(10)  # above the uniform floor: a real term, not diluted toward it


@pytest.mark.parametrize("method", ["joint", "unimodal"])
def test_every_method_adds_the_outlier_term(method: str, tiny_demo: Path, tmp_path: Path) -> None:
    from training.train import train

    outliers = _noise_outliers(tmp_path / "noise", n=16)
    cfg = TrainConfig(method=method, epochs=1, batch_size=16, workers=0, max_batches=2, outliers=f"csv:{outliers}")
    train(f"csv:{tiny_demo}", tmp_path / "run", cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = rows[0]["loss"]
    key = "joint_outliers" if method == "joint" else "audio_outliers"
    assert key in losses
    assert losses[key] >= 0.5 * math.log(10) - 1e-6  # bounded below by w log K
    assert "video_outliers" not in losses  # the outliers have no video


def test_training_with_outliers_flattens_the_output_on_them(tiny_demo: Path, tmp_path: Path) -> None:
    """The same run, with and without noise clips as outliers: with them, the model's answer on them is less sure."""
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.data.dataset import dataset_of
    from training.train import train

    outliers = _noise_outliers(tmp_path / "noise")
    runs = {}
    for exposed in (False, True):
        cfg = TrainConfig(
            method="mla",
            epochs=4,
            batch_size=32,
            workers=0,
            owm_alpha=10.0,
            outliers=f"csv:{outliers}" if exposed else None,
            outlier_weight=1.0,
        )
        train(f"csv:{tiny_demo}", tmp_path / f"run-{exposed}", cfg)
        runs[exposed] = load_checkpoint(tmp_path / f"run-{exposed}")
    assert runs[True]["train_config"]["outliers"] == f"csv:{outliers}"
    assert runs[False]["train_config"]["outliers"] is None
    top = {}
    for exposed, ckpt in runs.items():
        model = model_from_checkpoint(ckpt).eval()
        data = dataset_of(read_outliers(f"csv:{outliers}"), model.cfg)
        x = torch.stack([torch.as_tensor(data[i]["audio"]) for i in range(len(data))])
        with torch.no_grad():
            ((_, logits),) = model({"audio": x}).values()
        top[exposed] = float(torch.softmax(logits, 1).max(1).values.mean())
    assert top[True] < top[False], top
    assert top[True] < 0.2, top  # near uniform (0.1), where the plain run's answer is whatever its head makes of noise


def test_a_bad_outlier_list_is_refused_before_training(tiny_demo: Path, tmp_path: Path) -> None:
    from training.train import train

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "none.csv").write_text("note\nsomething\n")
    with pytest.raises(DataError, match="no column naming a modality"):
        read_outliers(f"csv:{folder / 'none.csv'}")
    (folder / "missing.csv").write_text("audio\nnot-there.wav\n")
    with pytest.raises(DataError, match=r"row 2: audio file 'not-there\.wav' does not exist"):
        read_outliers(f"csv:{folder / 'missing.csv'}")
    (folder / "empty.csv").write_text("audio,video\n,\n")
    with pytest.raises(DataError, match="row 2: no modality is given"):
        read_outliers(f"csv:{folder / 'empty.csv'}")
    with pytest.raises(DataError, match="use csv:PATH"):
        read_outliers(str(folder / "empty.csv"))
    outliers = _noise_outliers(tmp_path / "noise", n=2)
    assert [s.label for s in read_outliers(f"csv:{outliers}")] == [-1, -1]
    # audio outliers for a model that has no audio: refused before any decoding or epoch
    cfg = TrainConfig(method="mla", epochs=1, workers=0, owm_alpha=10.0, outliers=f"csv:{outliers}")
    with pytest.raises(DataError, match="gives none of this model's modalities"):
        train(f"csv:{tiny_demo}", tmp_path / "run", cfg, model_overrides={"modalities": ["video"]})
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="outlier_weight must be positive"):
        train(f"csv:{tiny_demo}", tmp_path / "run", TrainConfig(owm_alpha=10.0, outliers=f"csv:{outliers}", outlier_weight=0.0))
