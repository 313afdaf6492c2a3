"""Torch datasets over decoded arrays: a missing modality is zeros plus a False mask."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.modalities import kind
from training.config import ModelConfig
from training.data.cache import DecodeCache
from training.data.specs import DatasetManifest, Sample

Batch = dict[str, torch.Tensor]


class DecodedDataset(Dataset[dict[str, object]]):
    def __init__(self, samples: list[Sample], arrays: list[dict[str, Path | None]], cfg: ModelConfig) -> None:
        self.samples, self.arrays = samples, arrays
        self.modalities = list(cfg.modalities)
        self.blank = {m: kind(m).blank(cfg.spec(m), cfg.settings(m)) for m in self.modalities}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {"label": self.samples[i].label, "index": i}
        for m in self.modalities:
            path = self.arrays[i].get(m)
            item[m] = np.load(path) if path is not None else self.blank[m]
            item[f"{m}_present"] = path is not None
        return item


def build_dataset(
    manifest: DatasetManifest,
    split: str,
    cfg: ModelConfig,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> DecodedDataset:
    return dataset_of(manifest.split(split), cfg, workers, progress)


def dataset_of(
    samples: list[Sample], cfg: ModelConfig, workers: int = 1, progress: Callable[[int, int], None] | None = None
) -> DecodedDataset:
    """`samples` decoded into the cache for `cfg`'s inputs (a modality a sample lacks: blank, masked)."""
    arrays = DecodeCache().prepare(samples, {m: cfg.spec(m) for m in cfg.modalities}, workers, progress)
    return DecodedDataset(samples, arrays, cfg)


def make_loader(
    dataset: DecodedDataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0, distributed: bool = False
) -> DataLoader[dict[str, object]]:
    sampler: DistributedSampler[dict[str, object]] | None = (
        DistributedSampler(dataset, shuffle=shuffle, seed=seed) if distributed else None
    )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=generator,
        drop_last=False,
    )
