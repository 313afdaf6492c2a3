"""Unimodal: one model per modality (its encoder and its own head), the reference for each alone.

The models share no parameter, so training them side by side on the same batches is the
same as training each separately; each keeps its own best validation epoch.
"""

from __future__ import annotations

from training.data.dataset import Batch
from training.methods.base import Trainer


class UnimodalTrainer(Trainer):
    method = "unimodal"
    shared_head = False

    def train_step(self, batch: Batch, outliers: Batch | None = None) -> dict[str, float]:
        # One forward over every modality (DDP wants one forward per backward), its outliers in the same batch.
        picked = {m: r for m in self.modalities if (r := self.rows(batch, m)).anywhere}
        if not picked:
            return {}
        extra = {m: self.outlier_rows(outliers, m) for m in picked}
        out = self.net({m: self.with_outliers(r.x, extra[m]) for m, r in picked.items()})
        losses = {m: self.loss(out[m][1][: r.x.shape[0]], r.y, r.real) for m, r in picked.items()}
        for m, r in picked.items():
            if extra[m] is not None:
                losses[f"{m}_outliers"] = self.outlier_loss(out[m][1][r.x.shape[0] :])
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()  # type: ignore[union-attr]
        self.optimizer.step()
        return {m: v.item() for m, v in losses.items()}

    def selection_groups(self) -> dict[str, tuple[str, list[str]]]:
        return {m: (m, [f"encoders.{m}.", f"heads.{m}."]) for m in self.modalities}
