"""What every method shares: the optimiser, the step on a batch, and checkpoint selection."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.config import TrainConfig
from training.data.dataset import Batch
from training.distributed import World
from training.models import MultimodalClassifier


class Rows(NamedTuple):
    x: torch.Tensor  # inputs of the rows that have the modality (or one blank row, see Trainer.rows)
    y: torch.Tensor  # their labels
    real: bool  # this process has rows of the modality: its loss counts
    anywhere: bool  # some process has rows: everyone must run the forward and backward


class Trainer:
    method: ClassVar[str]
    shared_head: ClassVar[bool] = True  # whether this method's model has one head for all modalities

    def __init__(self, model: MultimodalClassifier, cfg: TrainConfig, world: World, steps_total: int) -> None:
        self.model, self.cfg, self.world = model, cfg, world
        self.modalities = list(model.cfg.modalities)
        # DDP over the whole model; unused parameters are normal here (one modality per forward).
        self.net: nn.Module = DistributedDataParallel(model, find_unused_parameters=True) if world.distributed else model
        self.optimizer = torch.optim.SGD(self.param_groups(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.steps_total = max(1, steps_total)
        self.step_count = 0
        # checkpoint selection on validation: group -> (best score, parameter-name prefixes)
        self.best: dict[str, float] = {g: -math.inf for g in self.selection_groups()}
        self.best_state: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.best_epoch: dict[str, int] = {g: -1 for g in self.selection_groups()}

    # --- per method -------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.model.parameters())}]

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One mini-batch; returns the losses to log."""
        raise NotImplementedError

    def selection_groups(self) -> dict[str, tuple[str, list[str]]]:
        """Checkpoint groups: name -> (validation accuracy key that scores it, state-dict prefixes)."""
        return {"all": ("+".join(self.modalities), [""])}

    def extra_state(self) -> dict[str, Any]:
        return {}

    # --- shared -------------------------------------------------------------------------
    def lr_now(self) -> float:
        """Cosine decay from lr to lr / 50 over the whole run."""
        t = min(1.0, self.step_count / self.steps_total)
        lo = self.cfg.lr / 50
        return lo + 0.5 * (self.cfg.lr - lo) * (1 + math.cos(math.pi * t))

    def step(self, batch: Batch) -> dict[str, float]:
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        losses = self.train_step(batch)
        self.step_count += 1
        return losses

    def rows(self, batch: Batch, modality: str) -> Rows:
        """The rows of `batch` that have `modality`, with their labels.

        In DDP every process must run the same forwards and backwards, so a process whose
        batch lacks the modality while another has it runs one blank row with zero loss weight.
        """
        mask = batch[f"{modality}_present"]
        local = int(mask.sum())
        total = int(self.world.sum(torch.tensor([local])).item()) if self.world.distributed else local
        if local == 0 and total > 0:
            return Rows(batch[modality][:1], batch["label"][:1], real=False, anywhere=True)
        return Rows(batch[modality][mask], batch["label"][mask], real=local > 0, anywhere=total > 0)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, real: bool = True) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        return loss if real else loss * 0.0

    def observe_validation(self, epoch: int, accuracy: dict[str, float]) -> bool:
        """Keep the parameters of the best validation epoch, per group; True if any improved."""
        improved = False
        state = self.model.state_dict()
        for group, (key, prefixes) in self.selection_groups().items():
            score = accuracy.get(key, -math.inf)
            if score > self.best[group]:
                self.best[group], self.best_epoch[group], improved = score, epoch, True
                for name, value in state.items():
                    if any(name.startswith(p) for p in prefixes):
                        self.best_state[name] = value.detach().clone()
        return improved
