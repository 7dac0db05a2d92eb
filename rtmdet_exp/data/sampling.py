"""Training order and per-sample augmentation that a resumed run reproduces exactly.

The sampler yields ``(epoch, index, position)`` triples: every DataLoader worker (persistent ones
included) knows the epoch and the place in the epoch of each sample it makes. So one sampler can run
on across epochs: the training loop iterates one loader from its start (or resume) to its last epoch,
and the workers never drain and restart at an epoch boundary (on an H200 that restart was most of
the 11% of step time spent waiting for data; 1% without it). A sample's random draws come from a
generator seeded by ``(seed, epoch, index)``, so they do not depend on the worker.

What does depend on history is the Mosaic/MixUp cache: a sample is mixed with images seen before
it. To make that exact too, the cache belongs to a *lane*: batch ``b`` of an epoch is made by lane
``b mod L`` (``L`` = the number of loader workers, 1 without workers), and the DataLoader's
round-robin hands each worker the batches of one lane. Caches are cleared at the start of every
epoch, and a worker that joins a lane mid-epoch (after a resume, or a worker restart) first
replays that lane's earlier samples of the epoch, discarding their output, which rebuilds the cache
and its random state exactly. The replay costs at most one epoch's share of one lane.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def epoch_order(size: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The dataset indices one rank trains on in ``epoch``, whole batches only, in order.

    The permutation depends on ``(seed, epoch)`` alone; ranks take interleaved shares of it.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(size, generator=gen)
    per_rank = (size // (batch_size * world_size)) * batch_size
    return perm[rank : per_rank * world_size : world_size].tolist()


class EpochSampler(Sampler):
    """``(epoch, index, position)`` triples of one rank from a position to the end of an epoch range.

    ``set_epoch(epoch, start_batch, end_epoch, max_batches)`` positions it: the first epoch starts at
    ``start_batch`` (a resumed run skips what it trained), the following ones run whole, up to
    ``end_epoch`` (exclusive; one epoch by default), each cut to ``max_batches`` batches if given.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < batch_size * world_size:
            raise ValueError(
                f"data.batch_size={batch_size} x {world_size} process(es) is larger than the training set "
                f"({size} images); lower data.batch_size"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.set_epoch(0)

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0, end_epoch: int | None = None,
                  max_batches: int | None = None) -> None:
        """Position the sampler at batch ``start_batch`` of ``epoch``, to run until ``end_epoch``."""
        self.epoch, self.start_batch = epoch, start_batch
        self.end_epoch = max(epoch + 1, end_epoch or 0)
        self.max_batches = max_batches

    @property
    def batches_in_epoch(self) -> int:
        """Batches taken from each epoch (``max_batches`` caps it)."""
        full = self.batches_per_epoch
        return full if self.max_batches is None else min(full, self.max_batches)

    def order(self, epoch: int) -> list[int]:
        return epoch_order(self.size, self.batch_size, self.seed, epoch, self.rank, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        stop = self.batches_in_epoch * self.batch_size
        for epoch in range(self.epoch, self.end_epoch):
            order = self.order(epoch)
            start = self.start_batch * self.batch_size if epoch == self.epoch else 0
            for position in range(start, stop):
                yield epoch, order[position], position

    def __len__(self) -> int:
        return ((self.end_epoch - self.epoch) * self.batches_in_epoch - self.start_batch) * self.batch_size


class AugmentedDataset(Dataset):
    """Items are ``(epoch, index, position)``: the sample through that epoch's pipeline, cache lanes kept exact.

    Args:
        dataset: gives raw samples by index (``dataset[index]``).
        augment: provides ``pipeline_for_epoch(epoch)`` and ``reset()`` (the Mosaic/MixUp caches).
        sampler: the :class:`EpochSampler` (its order is recomputed here for replays).
        lanes: number of cache lanes (the loader's worker count, at least 1).

    A worker process meets one lane per epoch; an in-process loader (``num_workers=0`` with
    ``lanes > 1``, as the preview tool uses) keeps one copy of the augmentation per lane.
    """

    def __init__(self, dataset: Any, augment: Any, sampler: EpochSampler, lanes: int) -> None:
        self.dataset, self.augment, self.sampler, self.lanes = dataset, augment, sampler, max(int(lanes), 1)
        self._state: dict[int, list[Any]] = {}  # lane -> [epoch, next position expected, augment copy]
        self.replayed = 0  # samples replayed in this process (for tests and logs)

    def __len__(self) -> int:
        return len(self.dataset)

    def _lane_state(self, epoch: int, lane: int, position: int) -> list[Any]:
        """This process's state of ``lane``: fresh (empty caches) at a new epoch or a break in its order."""
        if any(state[0] != epoch for state in self._state.values()):  # a new epoch: drop the old lanes
            self._state = {k: v for k, v in self._state.items() if v[0] == epoch}
        state = self._state.get(lane)
        if state is None or position < state[1]:
            augment = state[2] if state else self.augment if not self._state else copy.deepcopy(self.augment)
            augment.reset()
            state = self._state[lane] = [epoch, lane * self.sampler.batch_size, augment]
        return state

    def _run(self, augment: Any, epoch: int, index: int) -> dict[str, Any]:
        pipeline = augment.pipeline_for_epoch(epoch)
        pipeline.set_rng(np.random.default_rng([self.sampler.seed, epoch, index]))
        return pipeline(self.dataset[index])

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        epoch, index, position = key
        batch = self.sampler.batch_size
        lane = (position // batch) % self.lanes
        state = self._lane_state(epoch, lane, position)
        if position > state[1]:  # joined the lane mid-epoch: rebuild its cache first
            order = self.sampler.order(epoch)
            for earlier in range(state[1], position):
                if (earlier // batch) % self.lanes == lane:
                    self._run(state[2], epoch, order[earlier])
                    self.replayed += 1
        sample = self._run(state[2], epoch, index)
        following = position + 1
        state[1] = following if following % batch else following + (self.lanes - 1) * batch
        return sample
