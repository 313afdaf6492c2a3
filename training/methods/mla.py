"""MLA: alternating unimodal adaptation against one shared head, with its gradient projected.

Per mini-batch, each modality in turn: forward its encoder and the shared head, loss,
backward, project the head weight's gradient with P, step, then fold this batch's mean
feature direction into P (orthogonal weight modification, OWM):

    r = mean feature / |mean feature|,  k = P r,  P <- P - k k^T / (alpha + r^T P r)

P is one matrix kept across steps, epochs and modalities, so learning one modality moves
the head only in directions that leave the others' features' scores alone. The
denominator is a scalar: the authors' code divides by a matrix (and its parameter-name
check means the projection never ran at all).

r is a unit vector, so alpha means the same thing whatever the encoders' feature scale:
P starts as the identity and n folds of one direction leave it a gain of alpha / (alpha + n)
(alpha = 1 halves it at once, alpha = 100 after a hundred batches). On raw features, whose
squared norm is in the hundreds after a ReLU, alpha = 1 was a hard projection.
"""

from __future__ import annotations

from typing import Any

import torch

from training.data.dataset import Batch
from training.methods.base import Trainer


class HeadProjector:
    """The OWM projector P for a linear layer whose input has `dim` features."""

    def __init__(self, dim: int, alpha: float, device: torch.device | None = None) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha
        self.P = torch.eye(dim, device=device, dtype=torch.float64)
        self.updates = 0

    @torch.no_grad()
    def project_(self, grad: torch.Tensor) -> torch.Tensor:
        """In place: the weight gradient [out, dim] becomes grad @ P."""
        grad.copy_((grad.double() @ self.P).to(grad.dtype))
        return grad

    @torch.no_grad()
    def update(self, r: torch.Tensor) -> None:
        """Fold the direction of r [dim] into P (a zero vector has none and changes nothing)."""
        r = r.double().reshape(-1, 1)
        norm = float(r.norm())
        if norm == 0.0:
            return
        r = r / norm
        k = self.P @ r
        self.P -= (k @ k.T) / (self.alpha + float(r.T @ k))
        self.updates += 1

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """How much P holds back: trace(P) / D (1: nothing) and its smallest eigenvalue."""
        eig = torch.linalg.eigvalsh((self.P + self.P.T) / 2)
        return {"trace_over_dim": float(eig.sum() / eig.numel()), "lambda_min": float(eig.min())}


class MLATrainer(Trainer):
    method = "mla"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        head = self.model.head(self.modalities[0])
        alpha = self.cfg.owm_alpha
        if alpha is None and self.cfg.owm_project:
            raise ValueError("MLATrainer needs a number for owm_alpha; 'auto' is resolved by training.train")
        # Without the projection (the ablation) P stays the identity and alpha is never used.
        self.projector = HeadProjector(self.model.feature_dim, alpha or 1.0, head.weight.device)
        self.best_P = self.projector.P.clone()
        self._kept: list[float] = []  # ||G P|| / ||G|| of this epoch's steps

    def param_groups(self) -> list[dict[str, Any]]:
        # The head steps with exactly -lr * G P: momentum and weight decay would add back
        # components that P has just removed, so the head gets neither.
        head = {id(p) for p in self.model.head(self.model.cfg.modalities[0]).parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in head]
        head_params = [p for p in self.model.parameters() if id(p) in head]
        return [{"params": rest}, {"params": head_params, "momentum": 0.0, "weight_decay": 0.0}]

    def train_step(self, batch: Batch, outliers: Batch | None = None) -> dict[str, float]:
        losses = {}
        head = self.model.head(self.modalities[0])
        for m in self.modalities:
            x, y, real, anywhere = self.rows(batch, m)
            if not anywhere:
                continue
            # forward this modality alone through the shared head (its outliers, if any, in the same batch)
            out = self.outlier_rows(outliers, m)
            ((feats, logits),) = self.net({m: self.with_outliers(x, out)}).values()
            n = x.shape[0]
            fit = self.loss(logits[:n], y, real)
            loss = fit
            if out is not None:
                exposure = self.outlier_loss(logits[n:])
                losses[f"{m}_outliers"] = exposure.item()
                loss = fit + exposure
            feats = feats[:n]  # P learns the directions of the labelled rows only
            # backward, project the head's weight gradient, step
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.owm_project and head.weight.grad is not None:
                before = float(head.weight.grad.norm())
                self.projector.project_(head.weight.grad)
                if before > 0:
                    self._kept.append(float(head.weight.grad.norm()) / before)
            self.optimizer.step()
            # fold this batch's mean feature (averaged over every process) into P
            if self.cfg.owm_project:
                stats = torch.cat(
                    [
                        feats.detach().sum(0) if real else torch.zeros_like(feats[0]),
                        torch.tensor([float(x.shape[0] if real else 0)], device=feats.device),
                    ]
                )
                stats = self.world.sum(stats)
                if stats[-1] > 0:
                    self.projector.update(stats[:-1] / stats[-1])
            losses[m] = fit.item()
        return losses

    def epoch_stats(self) -> dict[str, float]:
        kept = sum(self._kept) / len(self._kept) if self._kept else 1.0
        self._kept = []
        return {**self.projector.diagnostics(), "grad_kept": kept, "updates": float(self.projector.updates)}

    def on_best(self) -> None:
        self.best_P = self.projector.P.clone()  # the checkpoint keeps the P that went with its weights

    def extra_state(self) -> dict[str, Any]:
        return {"owm_P": self.best_P.float().cpu(), "owm_updates": self.projector.updates, "owm_alpha": self.projector.alpha}

    def resume_state(self) -> dict[str, Any]:
        return {"P": self.projector.P.cpu(), "updates": self.projector.updates, "best_P": self.best_P.cpu()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        device = self.projector.P.device
        self.projector.P = state["P"].to(device, torch.float64)
        self.projector.updates = int(state["updates"])
        self.best_P = state["best_P"].to(device, torch.float64)
