"""One trainer per method over a common base: `TRAINERS[name]`."""

from training.methods.base import Trainer
from training.methods.joint import JointTrainer
from training.methods.mla import MLATrainer
from training.methods.unimodal import UnimodalTrainer

TRAINERS: dict[str, type[Trainer]] = {t.method: t for t in (MLATrainer, JointTrainer, UnimodalTrainer)}

__all__ = ["TRAINERS", "Trainer"]
