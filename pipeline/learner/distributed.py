"""Data-parallel training over processes that torchrun starts: which share of each batch is ours,
and how the processes ("ranks") agree.

Every rank holds the whole (small) dataset on its device and draws the same shuffle and the same
augmentation parameters from the shared seed, for the whole global batch; rank r then trains on
rows r, r + W, r + 2W, ... of each global batch of `train.batch_size` (W = world size).
DistributedDataParallel averages the gradients over ranks, and each rank's loss is weighted by its
share of the batch, so every step is the single-process step up to float summation order.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank on this machine: picks the GPU

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, history and MLflow records."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """RANK, WORLD_SIZE, LOCAL_RANK as torchrun sets them; a plain process is a world of one."""
        if env is None:
            env = os.environ
        try:
            size = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise PipelineError(
                "RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun, which "
                "sets them"
            ) from None
        if size < 1 or not 0 <= rank < size or local < 0:
            raise PipelineError(
                f"RANK={rank} does not fit WORLD_SIZE={size}; launch with torchrun, which sets them"
            )
        return cls(rank, size, local)


def device_for(world: World, device: torch.device) -> torch.device:
    """One GPU per rank on each machine: cuda:LOCAL_RANK."""
    if device.type != "cuda" or world.size == 1:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise PipelineError(
            f"LOCAL_RANK {world.local_rank} needs GPU {world.local_rank} but this machine has "
            f"{torch.cuda.device_count()}; start at most that many processes per node "
            "(--nproc_per_node)"
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the ranks (gloo on CPU, nccl on GPU) for the duration; a no-op for a world of one."""
    if world.size == 1:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """DistributedDataParallel, which averages the gradients over ranks during backward; the model
    itself for a world of one. The normalisation buffers are constants, so they are not re-sent
    before every forward pass (newer torch names that keyword forward_sync_buffers)."""
    if world.size == 1:
        return model
    ddp = torch.nn.parallel.DistributedDataParallel
    keyword = "forward_sync_buffers"
    if keyword not in inspect.signature(ddp).parameters:
        keyword = "broadcast_buffers"
    device = next(model.parameters()).device
    no_buffer_sync: dict[str, Any] = {keyword: False}
    return ddp(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync
    )


def rows(count: int, batch: int, world: World) -> torch.Tensor:
    """The positions this rank trains on in `count` images cut into global batches of `batch`."""
    within = torch.arange(count) % batch
    return torch.nonzero(within % world.size == world.rank)[:, 0]


def local_sizes(count: int, batch: int, world: World) -> list[int]:
    """This rank's number of images in each global batch of that run (some may be 0 at the end)."""
    return [
        len(range(start + world.rank, min(start + batch, count), world.size))
        for start in range(0, count, batch)
    ]


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over ranks, in place; the tensor itself for a world of one."""
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def from_main(obj: Any, world: World) -> Any:
    """Rank 0's value of `obj` on every rank, e.g. the resume state only rank 0 reads from disk.

    Sent pickled between the ranks of this run, which trust each other; what rank 0 sends it
    loaded itself with weights_only=True.
    """
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def dropout_seed(seed: int, epoch: int, rank: int) -> int:
    """Each rank's own dropout stream, fixed by (seed, epoch, rank), so a resumed run repeats it."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank
