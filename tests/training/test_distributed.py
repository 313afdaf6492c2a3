"""Collectives run on the process group's device (NCCL reduces only CUDA tensors, gloo only CPU ones)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
import torch.distributed as dist

from training.config import ModelConfig, TrainConfig
from training.distributed import World
from training.methods import TRAINERS
from training.models import build_model


@dataclass(frozen=True)
class RecordingWorld(World):
    """Two processes as seen from rank 0: every all-reduce recorded, the other rank contributing zeros."""

    seen: list[torch.device] = field(default_factory=list)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.device)
        return t


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    present = torch.tensor([True, False, True, True, False, True])[:n]
    return {
        "audio": torch.randn(n, 4000, generator=g) * 0.1,
        "audio_present": present,
        "video": torch.randint(0, 255, (n, 2, 16, 16, 3), generator=g, dtype=torch.uint8),
        "video_present": ~present,
        "label": torch.randint(0, 4, (n,), generator=g),
    }


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A real gloo group of one process, for DDP's own wrapper; the trainer's collectives go through the fake world."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.usefixtures("one_process_group")
@pytest.mark.parametrize("method", sorted(TRAINERS))
def test_every_reduced_tensor_sits_on_the_models_device(method: str) -> None:
    cfg = ModelConfig.for_encoder(
        "small",
        [str(i) for i in range(4)],
        modalities=["audio", "video"],
        inputs={"audio": {"clip_samples": 4000}, "video": {"frames": 2, "size": 16}},
        shared_head=method != "unimodal",
    )
    model = build_model(cfg)
    device = next(model.parameters()).device
    world = RecordingWorld(rank=0, size=2, device=device)
    trainer = TRAINERS[method](model, TrainConfig(method=method, owm_alpha=10.0), world, steps_total=10)
    for _ in range(2):
        trainer.step(_batch())
    assert world.seen, "the trainer made no collective call in a two-process world"
    assert all(d == device for d in world.seen), world.seen


def test_world_sum_moves_the_tensor_to_the_groups_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a caller builds anywhere reaches the backend on the world's device and comes back to the caller's."""
    handed: list[torch.device] = []

    def fake_all_reduce(t: torch.Tensor, op: object = None) -> None:
        handed.append(t.device)
        t.mul_(2)  # as if the other rank held the same values

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    world = World(rank=0, size=2, device=torch.device("cpu"))
    out = world.sum(torch.tensor([1.0, 2.0]))
    assert handed == [torch.device("cpu")]
    assert out.device == torch.device("cpu")
    assert out.tolist() == [2.0, 4.0]
    assert World().sum(torch.tensor([3.0])).tolist() == [3.0]  # one process: no collective at all
