"""Process-group setup for `torchrun --nproc_per_node=N` (gloo on CPU, nccl on GPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(
        default_factory=lambda: torch.device("cpu")
    )  # where this process's collectives run: cuda for NCCL, cpu for gloo

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce sum (a no-op in one process); returns the reduced tensor on the caller's device.

        NCCL reduces only CUDA tensors and gloo only CPU ones: the tensor goes to this world's
        device for the collective, whatever device the caller built it on.
        """
        if not self.distributed:
            return t
        on_group = t.to(self.device)
        dist.all_reduce(on_group, op=dist.ReduceOp.SUM)
        return on_group.to(t.device)


def init_world() -> World:
    """Join the process group that torchrun describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank, size, local, torch.device("cuda", local) if cuda else torch.device("cpu"))


def device_for(world: World) -> torch.device:
    """The model's device: this process's GPU when there is one."""
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
