"""A deterministic, resumable, rank-sharding sampler for map-style datasets.

The order of an epoch is a permutation drawn from ``(seed, epoch)`` only, so it is the same on every
rank, after a restart, and on any machine. Rank ``r`` of ``W`` takes positions ``start + r``,
``start + r + W``, ... of that permutation. With a per-rank batch ``b`` the ranks' ``s``-th batches
together cover positions ``s*W*b .. (s+1)*W*b - 1``: exactly the ``s``-th batch a single process
with batch ``W*b`` would see. ``start`` (a position in the *global* order) lets a resumed run pick
up mid-epoch where the crashed one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The global order of epoch ``epoch``: a permutation of ``range(num_samples)`` (int64)."""
    # SeedSequence mixes (seed, epoch) into a well-spread state; seed + epoch would make run
    # (seed=1, epoch=1) replay run (seed=2, epoch=0).
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(num_samples, generator=generator)


class ResumableDistributedSampler(Sampler[int]):
    """Shards a seeded per-epoch permutation across ranks and can start mid-epoch.

    Args:
        num_samples: length of the dataset.
        num_replicas: world size.
        rank: this process's rank.
        seed: base seed of the data order.
        shuffle: False keeps ``0..N-1`` order (still sharded and resumable).

    The tail that does not divide evenly among ranks is dropped, so every rank yields the same
    number of indices (DDP would hang otherwise).
    """

    def __init__(self, num_samples: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch and the global position to start from (a multiple of the world size)."""
        if start_index % self.num_replicas:
            raise ValueError(f"start_index {start_index} is not a multiple of the world size {self.num_replicas}")
        self.epoch = epoch
        self.start_index = start_index

    def global_order(self) -> torch.Tensor:
        """This epoch's order over all ranks, truncated to a multiple of the world size."""
        if self.shuffle:
            order = epoch_permutation(self.num_samples, self.seed, self.epoch)
        else:
            order = torch.arange(self.num_samples)
        usable = (self.num_samples // self.num_replicas) * self.num_replicas
        return order[:usable]

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()[self.start_index :]
        return iter(order[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        usable = (self.num_samples // self.num_replicas) * self.num_replicas
        return max(0, usable - self.start_index) // self.num_replicas
