"""Deterministic, resumable batch order, sharded across processes.

Epoch e visits the data in `randperm(n, seed + e)` order; global batch s is the s-th slice of
that stream. The order is a pure function of (seed, step), so resuming needs only the step, and
every process derives the same global batch and takes its own contiguous shard of it. Because
each process sees the whole global batch's indices, losses can be normalised by the *global*
token count (see `losses.reduce`), which keeps them independent of process count and
accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhfkit.config import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    n_examples: int
    batch_size: int  # global, all processes
    micro_batch_size: int  # per process per forward
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size % self.world_size:
            raise ConfigError(f"config key 'train.batch_size': {self.batch_size} must be divisible by the "
                              f"{self.world_size} processes")
        if self.n_examples < self.batch_size:
            raise ConfigError(
                f"config key 'train.batch_size': only {self.n_examples} training examples (after any held-out split) "
                f"for a global batch of {self.batch_size}; lower train.batch_size or add data"
            )

    @property
    def per_process(self) -> int:
        return self.batch_size // self.world_size

    @property
    def accumulation(self) -> int:
        return math.ceil(self.per_process / self.micro_batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.n_examples // self.batch_size  # drop the ragged tail: every step is a full batch

    def total_steps(self, epochs: float, max_steps: int) -> int:
        return max_steps if max_steps > 0 else max(1, int(self.steps_per_epoch * epochs))

    def global_batch(self, step: int, seed: int) -> list[int]:
        """Indices of global batch `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(self.n_examples, generator=g)
        return perm[k * self.batch_size : (k + 1) * self.batch_size].tolist()

    def shard(self, indices: list[int], rank: int) -> list[int]:
        return indices[rank * self.per_process : (rank + 1) * self.per_process]

    def micro_batches(self, indices: list[int]) -> Iterator[list[int]]:
        for i in range(0, len(indices), self.micro_batch_size):
            yield indices[i : i + self.micro_batch_size]
