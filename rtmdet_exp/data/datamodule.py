"""Datasets and loaders for one run: the ``data`` config group builds a :class:`DataModule`.

Determinism and resume: the training sampler yields ``(epoch, index)`` pairs instead of plain
indices, so every DataLoader worker (persistent ones included) knows the epoch of each sample it
makes. A sample's augmentation draws from a generator seeded by ``(seed, epoch, index)``, so the
data of a step does not depend on the number of workers or on where a run was resumed, and the
two-stage augmentation switch needs no loader restart.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rtmdet_exp.config import ConfigError
from rtmdet_exp.data.coco import CocoDetection
from rtmdet_exp.data.collate import collate
from rtmdet_exp.data.synthetic import ensure_synthetic_dataset
from rtmdet_exp.data.transforms import Compose, LetterboxResize
from rtmdet_exp.data.validate import Skipped, check_split

log = logging.getLogger(__name__)


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGTERM to the main process.

    SLURM, ``timeout`` and ``kill -TERM -<pgid>`` signal the whole process group; a worker killed
    by it makes the main process fail on its next batch before it can save ``interrupt.pt``.
    Ignoring it is safe: workers exit by themselves once the main process is gone.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochSampler(Sampler):
    """Shuffled ``(epoch, index)`` pairs for one rank, whole batches only, resumable mid-epoch.

    The permutation depends on ``(seed, epoch)`` alone; ranks take interleaved shares of it.
    ``set_epoch(epoch, start_batch)`` skips the batches a resumed run has already trained on.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < batch_size * world_size:
            raise ConfigError(
                f"data.batch_size={batch_size} x {world_size} process(es) is larger than the training set "
                f"({size} images); lower data.batch_size"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.size, generator=gen)
        per_rank = self.batches_per_epoch * self.batch_size
        mine = perm[self.rank : per_rank * self.world_size : self.world_size]  # [per_rank]
        for index in mine[self.start_batch * self.batch_size :].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class AugmentedDataset(Dataset):
    """Items are ``(epoch, index)``: the sample goes through that epoch's pipeline, seeded per sample."""

    def __init__(self, dataset: CocoDetection, augment: Any, seed: int) -> None:
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        pipeline = self.augment.pipeline_for_epoch(epoch)
        pipeline.set_rng(np.random.default_rng([self.seed, epoch, index]))
        return pipeline(self.dataset[index])


class DataModule:
    """Built-in or COCO-format data for training and validation.

    With ``synthetic`` set, the built-in procedural dataset is generated into ``root`` on first
    use (and reused after); otherwise ``train_json``/``val_json`` and the image folders point at
    any COCO-format dataset. ``augment`` is the built ``augment`` group (train pipelines).
    """

    def __init__(
        self,
        root: str,
        num_classes: int,
        img_size: int,
        batch_size: int,
        augment: Any,
        seed: int = 0,
        max_epochs: int = 1,
        rank: int = 0,
        world_size: int = 1,
        name: str = "coco",
        train_json: str | None = None,
        val_json: str | None = None,
        train_images: str | None = None,
        val_images: str | None = None,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        on_error: str = "raise",
        validate: bool = True,
        synthetic: dict[str, Any] | None = None,
    ) -> None:
        self.root, self.name, self.img_size = Path(root), name, img_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory and torch.cuda.is_available()
        self.on_error, self.validate, self.synthetic = on_error, validate, synthetic
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.expected_classes = num_classes
        self.paths = {"train_json": train_json, "val_json": val_json, "train_images": train_images,
                      "val_images": val_images}
        self.augment = augment
        self.augment.configure(img_size=img_size, max_epochs=max_epochs)
        self._train_loader: DataLoader | None = None

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Generate (built-in data), check paths, validate and open both splits."""
        if self.synthetic is not None:
            gen = dict(self.synthetic)
            made = ensure_synthetic_dataset(
                self.root,
                num_train=gen["num_train"],
                num_val=gen["num_val"],
                img_size=gen.get("image_size") or self.img_size,
                seed=gen["seed"],
                num_classes=self.expected_classes,
            )
            for key in self.paths:  # a path set in the config wins (debug=overfit validates on train)
                self.paths[key] = self.paths[key] or str(made[key])
        for key, value in self.paths.items():
            if value is None:
                raise ConfigError(f"data.{key} is not set; point it at your dataset (see conf/data/coco.yaml)")
            if not Path(value).exists():
                raise ConfigError(f"data.{key}: '{value}' does not exist")
        if self.validate:
            skip = self.on_error == "skip"
            self.skip_train = check_split(self.paths["train_json"], self.paths["train_images"], skip, "train")
            self.skip_val = check_split(self.paths["val_json"], self.paths["val_images"], skip, "val")
        else:
            self.skip_train = self.skip_val = Skipped(set(), set())
        self.train_set = CocoDetection(self.paths["train_images"], self.paths["train_json"],
                                       exclude_ids=self.skip_train.image_ids,
                                       exclude_ann_ids=self.skip_train.ann_ids)
        self.val_set = CocoDetection(self.paths["val_images"], self.paths["val_json"],
                                     pipeline=Compose([LetterboxResize(self.img_size)]),
                                     exclude_ids=self.skip_val.image_ids, exclude_ann_ids=self.skip_val.ann_ids)
        if self.train_set.class_names != self.val_set.class_names:
            raise ConfigError(
                f"data.train_json and data.val_json list different categories: "
                f"{self.train_set.class_names} vs {self.val_set.class_names}"
            )
        self.sampler = EpochSampler(len(self.train_set), self.batch_size, self.seed, self.rank, self.world_size)

    # --------------------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.train_set.class_names)

    @property
    def label_to_cat_id(self) -> list[int]:
        return list(self.val_set.label_to_cat_id)

    @property
    def val_coco(self) -> Any:
        return self.val_set.coco

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    @property
    def switch_epoch(self) -> int | None:
        """First epoch (0-based) of the weak-augmentation stage; None for one-stage pipelines."""
        return self.augment.switch_epoch

    def stage_of(self, epoch: int) -> int:
        return 2 if self.switch_epoch is not None and epoch >= self.switch_epoch else 1

    # ------------------------------------------------------------------------------ loaders
    def train_loader(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """The training loader positioned at ``(epoch, start_batch)``; built once, workers persist."""
        self.sampler.set_epoch(epoch, start_batch)
        if self._train_loader is None:
            dataset = AugmentedDataset(self.train_set, self.augment, self.seed)
            self._train_loader = DataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=collate,
                pin_memory=self.pin_memory,
                drop_last=True,
                persistent_workers=self.num_workers > 0,
                prefetch_factor=4 if self.num_workers > 0 else None,
                worker_init_fn=ignore_sigterm,
            )
        return self._train_loader

    def val_loader(self) -> DataLoader:
        """Validation loader in a fixed order (letterboxed to ``img_size``)."""
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=min(self.num_workers, 2),
            collate_fn=collate,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_sigterm,
        )

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                f"{self.num_classes} classes, {self.img_size} px, batch {self.batch_size}")

