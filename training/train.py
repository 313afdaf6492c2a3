"""`mla train`: one harness for every method. Reads top to bottom, one block per stage.

A run folder holds run.json (what was asked), metrics.jsonl (one row per epoch),
last.pt (everything needed to continue after a crash: `mla train --resume RUN_DIR`) and,
when it ends, checkpoint.pt (the best validation epoch) and val_accuracy.png. MLA with
`owm_alpha=None` ("auto") trains one sub-run per alpha of OWM_ALPHA_GRID in alpha-*/ and
keeps the one with the best validation accuracy.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from common.fusion import FusionParams
from common.modalities import kind
from training.checkpoint import CHECKPOINT_NAME, LAST_NAME, CheckpointError, save_checkpoint
from training.config import METHODS, OWM_ALPHA_GRID, ModelConfig, TrainConfig
from training.data.dataset import Batch, build_dataset, dataset_of, make_loader
from training.data.specs import DataError, Sample, outliers_for, parse_spec
from training.distributed import World, close_world, device_for, init_world
from training.evaluate import predict, score, to_device
from training.methods import TRAINERS, Trainer
from training.models import build_model
from training.models.classifier import resolve
from training.plots import plot_validation_curves

log = logging.getLogger(__name__)

# progress(event, done, total): "decode" while inputs are decoded, "batch" while training
Progress = Callable[[str, int, int], None]
RUN_NAME = "run.json"


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
    resume: bool = False,
) -> dict[str, Any]:
    """Train one method; write checkpoint.pt, last.pt, metrics.jsonl and val_accuracy.png into `out`.

    With `resume`, a run that stopped early continues from its last.pt (same configs); a run,
    or a sub-run of an alpha search, that finished is kept as it is (nothing is trained or
    written again).
    """
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose from {', '.join(METHODS)}")
    overrides = model_overrides or {}
    world = init_world()
    try:
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
            asked = {"data": data, "train_config": cfg.to_dict(), "encoder": encoder, "model_overrides": overrides}
            (out / RUN_NAME).write_text(json.dumps(asked, indent=2) + "\n")
        if cfg.method == "mla" and cfg.owm_project and cfg.owm_alpha is None:
            return _search_alpha(world, data, out, cfg, encoder, overrides, progress, resume)
        return _train(world, data, out, cfg, encoder, overrides, progress, resume)
    finally:
        close_world(world)


def resume_run(run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Continue the run in `run_dir` as it was asked (its run.json)."""
    path = run_dir / RUN_NAME
    if not path.is_file():
        raise CheckpointError(f"{run_dir} holds no {RUN_NAME}: it is not a run folder that can be resumed")
    asked = json.loads(path.read_text())
    cfg = TrainConfig.from_dict(asked["train_config"])
    return train(asked["data"], run_dir, cfg, asked["encoder"], asked["model_overrides"], progress, resume=True)


def _search_alpha(
    world: World,
    data: str,
    out: Path,
    cfg: TrainConfig,
    encoder: str,
    overrides: dict[str, Any],
    progress: Progress | None,
    resume: bool,
) -> dict[str, Any]:
    """One MLA run per alpha; the best validation accuracy (all modalities, own rule) is kept as this run."""
    results: dict[str, dict[str, Any]] = {}
    for alpha in OWM_ALPHA_GRID:
        sub = out / f"alpha-{alpha:g}"
        done = (sub / CHECKPOINT_NAME).is_file() and resume
        if not done:
            named = _named_progress(progress, f"alpha {alpha:g}")
            _train(world, data, sub, replace(cfg, owm_alpha=alpha), encoder, overrides, named, resume)
        if world.main:
            ckpt = torch.load(sub / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
            results[f"{alpha:g}"] = {
                "alpha": alpha,
                "val_accuracy": ckpt["best_validation"]["all"]["accuracy"],
                "train_seconds": ckpt["train_seconds"],
            }
        world.barrier()
    result: dict[str, Any] = {"run_dir": str(out)}
    if world.main:
        best = max(results.values(), key=lambda r: r["val_accuracy"])  # the first (strongest) of equals
        chosen = out / f"alpha-{best['alpha']:g}"
        ckpt = torch.load(chosen / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        ckpt["owm_alpha_search"] = {k: v["val_accuracy"] for k, v in results.items()}
        save_checkpoint(out / CHECKPOINT_NAME, ckpt)
        for name in ("metrics.jsonl", "val_accuracy.png"):
            shutil.copyfile(chosen / name, out / name)
        with (out / "metrics.jsonl").open("a") as f:
            f.write(
                json.dumps({"event": "alpha_search", "val_accuracy": ckpt["owm_alpha_search"], "chosen": best["alpha"]}) + "\n"
            )
        log.info("alpha search: %s; kept alpha %g", ckpt["owm_alpha_search"], best["alpha"])
        result.update(
            best_validation=ckpt["best_validation"],
            owm_alpha=best["alpha"],
            alpha_search=ckpt["owm_alpha_search"],
            train_seconds=round(sum(r["train_seconds"] for r in results.values()), 2),  # the whole search
        )
    return result


def _train(
    world: World,
    data: str,
    out: Path,
    cfg: TrainConfig,
    encoder: str,
    overrides: dict[str, Any],
    progress: Progress | None,
    resume: bool,
) -> dict[str, Any]:
    finished = _finished(out, cfg) if resume else None
    if finished is not None:
        return finished
    seed_everything(cfg.seed + world.rank)
    device = device_for(world)
    trainer_cls = TRAINERS[cfg.method]
    notify = progress if world.main else None

    # data: the main process decodes into the cache first, the others then find it there
    manifest = parse_spec(data) if world.main else None
    world.barrier()
    manifest = manifest or parse_spec(data)
    # the data set's modalities, or those of them an override names
    chosen = {**overrides}.pop("modalities", None) or manifest.modalities
    if set(chosen) - set(manifest.modalities):
        absent = ", ".join(sorted(set(chosen) - set(manifest.modalities)))
        raise DataError(f"{data} has no {absent} (it has {', '.join(manifest.modalities)})")
    rest = {k: v for k, v in overrides.items() if k != "modalities"}
    mcfg = ModelConfig.for_encoder(encoder, manifest.labels, shared_head=trainer_cls.shared_head, modalities=list(chosen), **rest)
    for m in cfg.augment:  # before minutes of decoding, not after
        if m not in mcfg.modalities:
            raise ValueError(f"augment names {m}, which this model does not have ({', '.join(mcfg.modalities)})")
        if kind(m).augmentation_class is None:
            raise ValueError(f"the {m} kind has no training-time augmentation")
    if unused := ", ".join(sorted(set(cfg.augment_settings) - set(cfg.augment))):
        raise ValueError(f"augmentation settings for {unused}, whose augmentation is not on (--augment {unused})")
    augmentations = {m: augmentation(m, cfg.augment_settings.get(m, {})) for m in cfg.augment}
    outlier_samples = _outlier_samples(cfg, mcfg.modalities)
    decode_progress = (lambda d, t: notify("decode", d, t)) if notify else None
    if world.main:
        train_set = build_dataset(manifest, "train", mcfg, max(1, cfg.workers), decode_progress)
        val_set = build_dataset(manifest, "val", mcfg, max(1, cfg.workers), decode_progress)
        outlier_set = dataset_of(outlier_samples, mcfg, max(1, cfg.workers), decode_progress) if outlier_samples else None
    world.barrier()
    if not world.main:
        train_set = build_dataset(manifest, "train", mcfg)
        val_set = build_dataset(manifest, "val", mcfg)
        outlier_set = dataset_of(outlier_samples, mcfg) if outlier_samples else None
    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.workers, cfg.seed, world.distributed)
    val_loader = make_loader(val_set, 2 * cfg.batch_size, False, cfg.workers)
    outlier_loader = (
        make_loader(outlier_set, cfg.batch_size, True, cfg.workers, cfg.seed + 1, world.distributed) if outlier_set else None
    )

    # model and method
    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    model = build_model(mcfg).to(device)
    for m, module in augmentations.items():
        model.encoders[m].augment = module
    steps_per_epoch = len(train_loader) if cfg.max_batches is None else min(cfg.max_batches, len(train_loader))
    trainer = trainer_cls(model, cfg, world, cfg.epochs * steps_per_epoch)
    rule = FusionParams(trainer_cls.fusion_rule)

    out.mkdir(parents=True, exist_ok=True)
    metrics_path, last_path = out / "metrics.jsonl", out / LAST_NAME
    history: list[dict[str, Any]] = []
    first_epoch, seconds_before = 1, 0.0
    if resume and last_path.is_file():
        last = torch.load(last_path, map_location="cpu", weights_only=False)  # our own file: it holds RNG states
        model.load_state_dict(last["model"])
        trainer.load_state(last["trainer"])
        history, first_epoch, seconds_before = last["history"], last["epoch"] + 1, last["train_seconds"]
        _set_rng(last["rng"][world.rank] if world.rank < len(last["rng"]) else last["rng"][0])
        log.info("resuming %s after epoch %d", out, last["epoch"])
    if world.main:  # the rows of the epochs kept, and nothing a killed epoch may have added
        metrics_path.write_text("".join(json.dumps(row) + "\n" for row in history))
    started = time.perf_counter() - seconds_before
    for epoch in range(first_epoch, cfg.epochs + 1):
        # train: the shuffle is a function of (seed, epoch), so a resumed run sees the same batches
        _reshuffle(train_loader, cfg.seed, epoch)
        outlier_batches = _outlier_batches(outlier_loader, cfg.seed + 1, epoch)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        for i, raw in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            aux = to_device(next(outlier_batches), device) if outlier_batches is not None else None
            for k, v in trainer.step(to_device(raw, device), aux).items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if notify:
                notify("batch", (epoch - 1) * steps_per_epoch + i + 1, cfg.epochs * steps_per_epoch)
        train_seconds = time.perf_counter() - t0
        stats = trainer.epoch_stats()

        # validate by the method's own rule and keep the best epoch (chosen on validation, never on test), or each
        # epoch in turn with keep="last"
        if world.main:
            val = score(predict(model, val_loader, device), rule)
            improved = trainer.observe_validation(epoch, val["accuracy"])
            row = {
                "event": "epoch",
                "epoch": epoch,
                "lr": trainer.lr_now(),
                "loss": {k: sums[k] / counts[k] for k in sums},
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "val_nll": val["nll"],
                "fusion": rule.rule,
                "improved": improved,
                "train_seconds": round(train_seconds, 3),
                **({"projection": stats} if stats else {}),
            }
            history.append(row)
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("epoch %d loss %s val %s", epoch, row["loss"], val["accuracy"])
        # last.pt: written after the epoch's metrics row, atomically, so a kill at any point leaves a consistent pair
        rng = _gather_rng(world)
        if world.main:
            last = {
                "format": 1,
                "epoch": epoch,
                "model": model.state_dict(),
                "trainer": trainer.state(),
                "history": history,
                "rng": rng,
                "train_seconds": time.perf_counter() - started,
                "model_config": mcfg.to_dict(),
                "train_config": cfg.to_dict(),
                "data": data,
            }
            save_checkpoint(last_path, last)
        world.barrier()

    # checkpoint: the best validation epoch (per selection group), with its configs
    result: dict[str, Any] = {"run_dir": str(out)}
    if world.main:
        ckpt = _checkpoint(trainer, mcfg, data, world.size, history, time.perf_counter() - started)
        best_val = ckpt["best_validation"]
        save_checkpoint(out / CHECKPOINT_NAME, ckpt)
        with metrics_path.open("a") as f:
            done = {
                "event": "done",
                "best_validation": best_val,
                "world_size": world.size,
                "train_seconds": ckpt["train_seconds"],
            }
            f.write(json.dumps(done) + "\n")
        plot_validation_curves(metrics_path, out / "val_accuracy.png", f"{cfg.method} ({encoder}) on {data}")
        result.update(best_validation=best_val, train_seconds=ckpt["train_seconds"])
    return result


def augmentation(modality: str, settings: dict[str, Any]) -> torch.nn.Module:
    """The modality's kind's training-time augmentation with `settings` as keyword arguments; a ValueError naming
    what the class does not take, or what it refuses."""
    cls = resolve(str(kind(modality).augmentation_class))
    try:
        return cls(**settings)
    except TypeError as exc:  # an unknown keyword, or a value of the wrong type (a string where a number goes)
        raise ValueError(f"the {modality} augmentation ({cls.__name__}) does not take {settings}: {exc}") from exc


def _reshuffle(loader: DataLoader[Any], stream: int, epoch: int) -> None:
    """A different shuffle each epoch, a function of (stream, epoch) alone, the same on every process: a resumed
    run sees the batches an uninterrupted one would."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif loader.generator is not None:
        loader.generator.manual_seed(stream * 100_003 + epoch)


def _outlier_samples(cfg: TrainConfig, modalities: list[str]) -> list[Sample]:
    """The outliers `cfg` names, checked before any decoding (none: no outlier exposure)."""
    if cfg.outliers is None:
        return []
    if not cfg.outlier_weight > 0:
        raise ValueError(f"outlier_weight must be positive, got {cfg.outlier_weight}")
    return outliers_for(cfg.outliers, modalities)


def _outlier_batches(loader: DataLoader[Any] | None, stream: int, epoch: int) -> Iterator[Batch] | None:
    """Outlier batches for one epoch, cycling through the set as often as the epoch needs, shuffled as the
    training split is (`_reshuffle`, on a stream of their own)."""
    if loader is None:
        return None
    _reshuffle(loader, stream, epoch)

    def cycle() -> Iterator[Batch]:
        while True:
            yield from loader

    return cycle()


def _checkpoint(
    trainer: Trainer, mcfg: ModelConfig, data: str, world_size: int, history: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """checkpoint.pt: the epoch the trainer kept (per selection group), with its configs."""
    return {
        "format": 1,
        "method": trainer.cfg.method,
        "fusion_rule": type(trainer).fusion_rule,
        "model_config": mcfg.to_dict(),
        "train_config": trainer.cfg.to_dict(),
        "state_dict": trainer.best_state,
        "data": data,
        "world_size": world_size,
        "best_validation": {g: {"epoch": trainer.best_epoch[g], "accuracy": trainer.best[g]} for g in trainer.best},
        "val_accuracy": _val_of_best(history, trainer.best_epoch),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_seconds": round(seconds, 2),
        **trainer.extra_state(),
    }


def checkpoint_of_last(run_dir: Path) -> dict[str, Any]:
    """The checkpoint a finished run would have written with `keep="last"`, made from its last.pt: the last epoch's
    weights (and MLA's projection with them), its validation figures, the run's configs with keep "last". Training
    does not depend on which epoch is kept, so this equals the checkpoint of the same run trained with --keep last."""
    last = torch.load(run_dir / LAST_NAME, map_location="cpu", weights_only=False)  # our own file: it holds RNG states
    cfg = replace(TrainConfig.from_dict(last["train_config"]), keep="last")
    if int(last["epoch"]) < cfg.epochs:
        raise CheckpointError(f"{run_dir} stopped after epoch {last['epoch']} of {cfg.epochs}: finish it with --resume first")
    mcfg = ModelConfig.from_dict(last["model_config"])
    model = build_model(mcfg)
    model.load_state_dict(last["model"])
    trainer = TRAINERS[cfg.method](model, cfg, World(), 1)
    trainer.load_state(last["trainer"])
    history = last["history"]
    trainer.observe_validation(int(last["epoch"]), history[-1]["val_accuracy"])
    world_size = len(last["rng"])  # one RNG state per process of the run
    return _checkpoint(trainer, mcfg, last["data"], world_size, history, float(last["train_seconds"]))


def _finished(out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """A run that already trained every epoch and saved its checkpoint: what it returned, without training or
    writing anything again (so the checkpoint, and every cache keyed by its hash, stays as it is)."""
    ckpt_path, last_path = out / CHECKPOINT_NAME, out / LAST_NAME
    if not (ckpt_path.is_file() and last_path.is_file()):
        return None
    last = torch.load(last_path, map_location="cpu", weights_only=False)  # our own file
    if int(last["epoch"]) < cfg.epochs:
        return None
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return {"run_dir": str(out), "best_validation": ckpt["best_validation"], "train_seconds": ckpt["train_seconds"]}


def _named_progress(progress: Progress | None, name: str) -> Progress | None:
    """Training events of one sub-run reported under their own name ("batch:alpha 10")."""
    if progress is None:
        return None
    inner = progress
    return lambda event, done, total: inner(f"{event}:{name}" if event == "batch" else event, done, total)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _gather_rng(world: World) -> list[dict[str, Any]]:
    """Every process's RNG states (the main process saves them all)."""
    if not world.distributed:
        return [_rng_state()]
    import torch.distributed as dist

    states: list[Any] = [None] * world.size
    dist.all_gather_object(states, _rng_state())
    return states


def _val_of_best(history: list[dict[str, Any]], best_epoch: dict[str, int]) -> dict[str, float]:
    """Validation accuracy per subset at the epoch whose parameters were kept (per group)."""
    by_epoch = {r["epoch"]: r["val_accuracy"] for r in history}
    if "all" in best_epoch:
        return dict(by_epoch.get(best_epoch["all"], {}))
    return {m: by_epoch.get(e, {}).get(m, float("nan")) for m, e in best_epoch.items()}
