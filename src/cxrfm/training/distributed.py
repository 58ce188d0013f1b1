"""Process-group helpers for runs launched by ``torchrun``; all of them are no-ops otherwise.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. When they are
absent the run is a single process and every helper here behaves as if the world had one member,
so the training loop has a single code path.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cxrfm.utils.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run.

    Attributes:
        rank: global rank (0 for a single process).
        local_rank: rank on this node (selects the GPU).
        world_size: number of processes.
        device: the device this process computes on.
        initialized_here: True when :func:`init_distributed` created the process group (so
            :func:`cleanup_distributed` should destroy it).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when ``WORLD_SIZE`` > 1 was set by a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU).

    A process group that already exists (e.g. made by a test) is reused and left alone at the end.
    """
    if not launched_by_torchrun():
        return DistributedContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        initialized_here = True
        log.info("joined process group: rank %d of %d (%s, %s)", rank, world_size, backend, resolved)
    return DistributedContext(rank, local_rank, world_size, resolved, initialized_here)


def cleanup_distributed(context: DistributedContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if context.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; the input is untouched)."""
    if get_world_size() == 1:
        return tensor.clone()
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def all_gather_objects(obj):
    """Every rank's ``obj`` as a list indexed by rank (a one-item list in a single process)."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
