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

    def train_step(self, batch: Batch) -> dict[str, float]:
        y = batch["label"]
        picked = {m: r for m in self.modalities if (r := self.rows(batch, m)).anywhere}
        out = self.net({m: r.x for m, r in picked.items()})
        summed = torch.zeros(y.shape[0], self.model.cfg.n_classes, device=y.device)
        for m, (_, logits) in out.items():
            if picked[m].real:  # else this process ran a blank row only to keep DDP in step
                rows = batch[f"{m}_present"].nonzero(as_tuple=True)[0]
                summed = summed.index_put((rows,), logits, accumulate=True)
        loss = self.loss(summed, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"joint": loss.item()}
