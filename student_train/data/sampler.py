"""Which samples each rank reads at each micro-step: sharded, shuffled, resumable.

The stream is a sequence of *global micro-steps*. Epoch e shuffles the N samples with a
generator seeded by `seed + e` (DistributedSampler's rule) and cuts the permutation into chunks
of `world_size * micro_batch` consecutive samples; rank r takes the r-th of `world_size` near-equal
parts of each chunk. So

* every rank runs the same number of micro-steps (DeepSpeed's collectives need that),
* one epoch covers every sample exactly once across the ranks (no padding by repetition),
* micro-step s is a pure function of (seed, N, world_size, micro_batch, s): resuming at step s
  skips exactly the micro-batches already consumed, without reading them.

The last chunk of an epoch may be short; its parts are then smaller than `micro_batch`. If it
holds fewer than `world_size` samples some rank would get none, so it is merged into the
previous chunk instead (parts of `micro_batch + 1` at most).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


def micro_steps_per_epoch(num_samples: int, world_size: int, micro_batch: int) -> int:
    """Global micro-steps in one epoch of `num_samples` (the same on every rank)."""
    if num_samples < world_size:
        raise ValueError(
            f"{num_samples} samples cannot feed {world_size} ranks (each rank needs at least one "
            "sample per micro-step): use fewer ranks or a larger subset"
        )
    chunk = world_size * micro_batch
    steps = math.ceil(num_samples / chunk)
    if steps > 1 and 0 < num_samples % chunk < world_size:
        steps -= 1  # the short last chunk is merged into the previous one
    return steps


class ShardedBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices) for global micro-steps
    `start_step, start_step + 1, ..., end_step - 1`, crossing epochs as needed.

    end_step None: up to the end of the epoch that contains `start_step`.
    """

    def __init__(
        self,
        num_samples: int,
        rank: int,
        world_size: int,
        micro_batch: int,
        seed: int,
        start_step: int = 0,
        end_step: int | None = None,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.micro_batch, self.seed, self.shuffle = micro_batch, seed, shuffle
        self.steps_per_epoch = micro_steps_per_epoch(num_samples, world_size, micro_batch)
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if end_step is None:
            end_step = (start_step // self.steps_per_epoch + 1) * self.steps_per_epoch
        if end_step < start_step:
            raise ValueError(f"end_step {end_step} is before start_step {start_step}")
        self.start_step, self.end_step = start_step, end_step

    def __len__(self) -> int:
        return self.end_step - self.start_step

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """[N] int64: the order of epoch `epoch` (identical on every rank)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def step_indices(self, step: int, order: torch.Tensor | None = None) -> list[int]:
        """This rank's dataset indices at global micro-step `step`."""
        epoch, s = divmod(step, self.steps_per_epoch)
        if order is None:
            order = self.epoch_order(epoch)
        chunk = self.world_size * self.micro_batch
        lo = s * chunk
        # the last step of the epoch takes whatever is left (possibly a merged short chunk)
        hi = self.num_samples if s == self.steps_per_epoch - 1 else lo + chunk
        part = torch.tensor_split(order[lo:hi], self.world_size)[self.rank]
        return part.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, None
        for step in range(self.start_step, self.end_step):
            e = step // self.steps_per_epoch
            if e != epoch:  # one permutation per epoch, not per step
                epoch, order = e, self.epoch_order(e)
            yield self.step_indices(step, order)
