"""Joint training: one loss on the summed per-modality logits of the shared head (late fusion).

The usual baseline, and the one that suffers modality imbalance: once the dominant
modality drives the loss down, the other's encoder gets little gradient.
"""

from __future__ import annotations

import torch

from training.data.dataset import Batch
from training.methods.base import Trainer


class JointTrainer(Trainer):
    method = "joint"
    fusion_rule = "logit_sum"  # it learns to predict argmax(sum of logits), and is scored by that

    def train_step(self, batch: Batch, outliers: Batch | None = None) -> dict[str, float]:
        y = batch["label"]
        picked = {m: r for m in self.modalities if (r := self.rows(batch, m)).anywhere}
        extra = {m: self.outlier_rows(outliers, m) for m in picked}
        out = self.net({m: self.with_outliers(r.x, extra[m]) for m, r in picked.items()})
        summed = torch.zeros(y.shape[0], self.model.cfg.n_classes, device=y.device)
        outlier_sum, covered = None, None
        if outliers is not None:  # an outlier's fused logits: the sum over the modalities it has that this batch trains
            outlier_sum = torch.zeros(outliers["label"].shape[0], self.model.cfg.n_classes, device=y.device)
            covered = torch.zeros(outliers["label"].shape[0], dtype=torch.bool, device=y.device)
        for m, (_, logits) in out.items():
            n = picked[m].x.shape[0]
            if picked[m].real:  # else this process ran a blank row only to keep DDP in step
                rows = batch[f"{m}_present"].nonzero(as_tuple=True)[0]
                summed = summed.index_put((rows,), logits[:n], accumulate=True)
            if outliers is not None and outlier_sum is not None and covered is not None and extra[m] is not None:
                present = outliers[f"{m}_present"]
                outlier_sum = outlier_sum.index_put((present.nonzero(as_tuple=True)[0],), logits[n:], accumulate=True)
                covered = covered | present
        loss = self.loss(summed, y)
        losses = {"joint": loss.item()}
        if outlier_sum is not None and covered is not None and bool(covered.any()):
            # only the outliers with a modality trained here: the others' sum stays 0, uniform, and would only
            # shrink the mean (their term is log K whatever the weights)
            exposure = self.outlier_loss(outlier_sum[covered])
            losses["joint_outliers"] = exposure.item()
            loss = loss + exposure
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return losses
