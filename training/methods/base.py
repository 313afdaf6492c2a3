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
    fusion_rule: ClassVar[str] = "entropy"  # the rule its predictions are selected and reported by

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

    def train_step(self, batch: Batch, outliers: Batch | None = None) -> dict[str, float]:
        """One mini-batch (and, with outlier exposure, a batch of outliers); returns the losses to log."""
        raise NotImplementedError

    def selection_groups(self) -> dict[str, tuple[str, list[str]]]:
        """Checkpoint groups: name -> (validation accuracy key that scores it, state-dict prefixes)."""
        return {"all": ("+".join(self.modalities), [""])}

    def extra_state(self) -> dict[str, Any]:
        """What the best checkpoint carries besides its weights."""
        return {}

    def epoch_stats(self) -> dict[str, float]:
        """Figures of the epoch just trained, for metrics.jsonl (and reset for the next)."""
        return {}

    def on_best(self) -> None:
        """Called when a selection group improved: keep whatever must go with the best weights."""

    def resume_state(self) -> dict[str, Any]:
        """Method state a resumed run needs besides the model, the optimiser and the selection."""
        return {}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        pass

    # --- shared -------------------------------------------------------------------------
    def lr_now(self) -> float:
        """Cosine decay from lr to lr / 50 over the whole run."""
        t = min(1.0, self.step_count / self.steps_total)
        lo = self.cfg.lr / 50
        return lo + 0.5 * (self.cfg.lr - lo) * (1 + math.cos(math.pi * t))

    def step(self, batch: Batch, outliers: Batch | None = None) -> dict[str, float]:
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        losses = self.train_step(batch, outliers)
        self.step_count += 1
        return losses

    def rows(self, batch: Batch, modality: str) -> Rows:
        """The rows of `batch` that have `modality`, with their labels.

        In DDP every process must run the same forwards and backwards, so a process whose
        batch lacks the modality while another has it runs one blank row with zero loss weight.
        """
        mask = batch[f"{modality}_present"]
        local = int(mask.sum())
        count = torch.tensor([local], device=mask.device)
        total = int(self.world.sum(count).item()) if self.world.distributed else local
        if local == 0 and total > 0:
            return Rows(batch[modality][:1], batch["label"][:1], real=False, anywhere=True)
        return Rows(batch[modality][mask], batch["label"][mask], real=local > 0, anywhere=total > 0)

    @staticmethod
    def outlier_rows(outliers: Batch | None, modality: str) -> torch.Tensor | None:
        """The outliers' inputs of `modality` (None: no outlier batch, or none of its rows has the modality)."""
        if outliers is None:
            return None
        mask = outliers[f"{modality}_present"]
        return outliers[modality][mask] if bool(mask.any()) else None

    def outlier_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Outlier exposure: the weighted cross-entropy from the uniform distribution to the model's output on
        outliers, -mean over classes of log softmax (its least, log K, where the output is uniform)."""
        return self.cfg.outlier_weight * -F.log_softmax(logits, dim=1).mean(1).mean()

    @staticmethod
    def with_outliers(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """The rows and the outliers in one batch (one forward: BatchNorm sees both, as in the OE paper)."""
        return x if out is None else torch.cat([x, out])

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, real: bool = True) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        return loss if real else loss * 0.0

    def observe_validation(self, epoch: int, accuracy: dict[str, float]) -> bool:
        """Keep the parameters of the best validation epoch, per group (of every epoch, the last one kept, with
        `keep="last"`); True if any was kept."""
        improved = False
        state = self.model.state_dict()
        for group, (key, prefixes) in self.selection_groups().items():
            score = accuracy.get(key, -math.inf)
            if score > self.best[group] or self.cfg.keep == "last":
                self.best[group], self.best_epoch[group], improved = score, epoch, True
                for name, value in state.items():
                    if any(name.startswith(p) for p in prefixes):
                        self.best_state[name] = value.detach().clone()
        if improved:
            self.on_best()
        return improved

    # --- resuming -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a killed run needs to continue exactly where it stopped (with the model's weights)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "best": dict(self.best),
            "best_epoch": dict(self.best_epoch),
            "best_state": self.best_state,
            "method_state": self.resume_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step_count"])
        self.best = {k: float(v) for k, v in state["best"].items()}
        self.best_epoch = {k: int(v) for k, v in state["best_epoch"].items()}
        self.best_state = state["best_state"]
        self.load_resume_state(state["method_state"])
