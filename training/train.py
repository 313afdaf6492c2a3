"""`mla train`: one harness for every method. Reads top to bottom, one block per stage."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from training.checkpoint import CHECKPOINT_NAME, save_checkpoint
from training.config import METHODS, ModelConfig, TrainConfig
from training.data.dataset import build_dataset, make_loader
from training.data.specs import parse_spec
from training.distributed import close_world, device_for, init_world
from training.evaluate import predict, score, to_device
from training.methods import TRAINERS
from training.models import build_model
from training.plots import plot_validation_curves

log = logging.getLogger(__name__)

# progress(event, done, total): "decode" while inputs are decoded, "batch" while training
Progress = Callable[[str, int, int], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    data: str,
    out: Path,
    cfg: TrainConfig,
    encoder: str = "small",
    model_overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train one method; write checkpoint.pt, metrics.jsonl and val_accuracy.png into `out`."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose from {', '.join(METHODS)}")
    world = init_world()
    try:
        return _train(world, data, out, cfg, encoder, model_overrides or {}, progress)
    finally:
        close_world(world)


def _train(
    world: Any, data: str, out: Path, cfg: TrainConfig, encoder: str, overrides: dict[str, Any], progress: Progress | None
) -> dict[str, Any]:
    seed_everything(cfg.seed + world.rank)
    device = device_for(world)
    trainer_cls = TRAINERS[cfg.method]
    notify = progress if world.main else None

    # data: the main process decodes into the cache first, the others then find it there
    manifest = parse_spec(data) if world.main else None
    world.barrier()
    manifest = manifest or parse_spec(data)
    mcfg = ModelConfig.for_encoder(encoder, manifest.labels, shared_head=trainer_cls.shared_head, **overrides)
    decode_progress = (lambda d, t: notify("decode", d, t)) if notify else None
    if world.main:
        train_set = build_dataset(manifest, "train", mcfg, max(1, cfg.workers), decode_progress)
        val_set = build_dataset(manifest, "val", mcfg, max(1, cfg.workers), decode_progress)
    world.barrier()
    if not world.main:
        train_set = build_dataset(manifest, "train", mcfg)
        val_set = build_dataset(manifest, "val", mcfg)
    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.workers, cfg.seed, world.distributed)
    val_loader = make_loader(val_set, 2 * cfg.batch_size, False, cfg.workers)

    # model and method
    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    model = build_model(mcfg).to(device)
    steps_per_epoch = len(train_loader) if cfg.max_batches is None else min(cfg.max_batches, len(train_loader))
    trainer = trainer_cls(model, cfg, world, cfg.epochs * steps_per_epoch)

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if world.main:
        metrics_path.write_text("")
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        # train
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every process
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        for i, raw in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            for k, v in trainer.step(to_device(raw, device)).items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if notify:
                notify("batch", (epoch - 1) * steps_per_epoch + i + 1, cfg.epochs * steps_per_epoch)
        train_seconds = time.perf_counter() - t0

        # validate and keep the best epoch (chosen on validation, never on test)
        if world.main:
            val = score(predict(model, val_loader, device))
            improved = trainer.observe_validation(epoch, val["accuracy"])
            row = {
                "event": "epoch",
                "epoch": epoch,
                "lr": trainer.lr_now(),
                "loss": {k: sums[k] / counts[k] for k in sums},
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "improved": improved,
                "train_seconds": round(train_seconds, 3),
            }
            history.append(row)
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("epoch %d loss %s val %s", epoch, row["loss"], val["accuracy"])
        world.barrier()

    # checkpoint: the best validation epoch (per selection group), with its configs
    result: dict[str, Any] = {"run_dir": str(out)}
    if world.main:
        best_val = {g: {"epoch": trainer.best_epoch[g], "accuracy": trainer.best[g]} for g in trainer.best}
        ckpt = {
            "format": 1,
            "method": cfg.method,
            "model_config": mcfg.to_dict(),
            "train_config": cfg.to_dict(),
            "state_dict": trainer.best_state,
            "data": data,
            "world_size": world.size,
            "best_validation": best_val,
            "val_accuracy": _val_of_best(history, trainer.best_epoch),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "train_seconds": round(time.perf_counter() - started, 2),
            **trainer.extra_state(),
        }
        save_checkpoint(out / CHECKPOINT_NAME, ckpt)
        with metrics_path.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "event": "done",
                        "best_validation": best_val,
                        "world_size": world.size,
                        "train_seconds": ckpt["train_seconds"],
                    }
                )
                + "\n"
            )
        plot_validation_curves(metrics_path, out / "val_accuracy.png", f"{cfg.method} ({encoder}) on {data}")
        result.update(best_validation=best_val, train_seconds=ckpt["train_seconds"])
    return result


def _val_of_best(history: list[dict[str, Any]], best_epoch: dict[str, int]) -> dict[str, float]:
    """Validation accuracy per subset at the epoch whose parameters were kept (per group)."""
    by_epoch = {r["epoch"]: r["val_accuracy"] for r in history}
    if "all" in best_epoch:
        return dict(by_epoch.get(best_epoch["all"], {}))
    return {m: by_epoch.get(e, {}).get(m, float("nan")) for m, e in best_epoch.items()}
