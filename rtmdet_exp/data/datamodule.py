"""Datasets and loaders for one run: the ``data`` config group builds a :class:`DataModule`.

Training order, per-sample seeding and the exact rebuild of the Mosaic/MixUp caches after a resume
are in :mod:`rtmdet_exp.data.sampling`; the two-stage augmentation switch needs no loader restart
because every sample carries its epoch.
"""

from __future__ import annotations

import logging
import signal
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader

from rtmdet_exp.data.coco import CocoDetection, DataError
from rtmdet_exp.data.collate import collate
from rtmdet_exp.data.sampling import AugmentedDataset, EpochSampler
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


def one_opencv_thread() -> None:
    """One OpenCV thread in this process and so in the loader workers it forks next.

    OpenCV spreads resizes, warps and colour conversions over every core by default; in N workers
    that is N pools of threads on the same cores (Ultralytics and mmcv set the same limit). It is set
    before the workers fork because a worker cannot set it itself: ``cv2.setNumThreads`` in a forked
    child waits forever on the lock of the parent's thread pool.
    """
    cv2.setNumThreads(1)


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
        cache_images: bool = False,
    ) -> None:
        self.root, self.name, self.img_size = Path(root), name, img_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory and torch.cuda.is_available()
        self.on_error, self.validate, self.synthetic = on_error, validate, synthetic
        self.cache_images = cache_images
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.expected_classes = num_classes
        self.paths = {"train_json": train_json, "val_json": val_json, "train_images": train_images,
                      "val_images": val_images}
        self.augment = augment  # configured (image size, epochs) by the caller
        self._train_set: AugmentedDataset | None = None
        self._train_loaders: dict[int, DataLoader] = {}  # by worker count

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
                raise DataError(f"data.{key} is not set; point it at your dataset (see conf/data/coco.yaml)")
            if not Path(value).exists():
                raise DataError(f"data.{key}: '{value}' does not exist")
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
            raise DataError(
                f"data.train_json ({self.paths['train_json']}) and data.val_json ({self.paths['val_json']}) list "
                f"different categories: {self.train_set.class_names} vs {self.val_set.class_names}"
            )
        if self.cache_images:
            seconds = self.train_set.cache_images() + self.val_set.cache_images()
            log.info("data.cache_images: %d train and %d val images decoded into memory in %.1f s",
                     len(self.train_set), len(self.val_set), seconds)
        try:
            self.sampler = EpochSampler(len(self.train_set), self.batch_size, self.seed, self.rank, self.world_size)
        except ValueError as err:
            raise DataError(str(err)) from err

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
    def val_annotation_file(self) -> str:
        """Absolute path of the validation annotations (what the run's val detections refer to)."""
        return str(Path(self.paths["val_json"]).resolve())

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    @property
    def switch_epoch(self) -> int | None:
        """First epoch (0-based) of the weak-augmentation stage; None for one-stage pipelines."""
        return self.augment.switch_epoch

    # ------------------------------------------------------------------------------ loaders
    def train_loader(self, epoch: int, start_batch: int = 0, in_process: bool = False, end_epoch: int | None = None,
                     max_batches: int | None = None) -> DataLoader:
        """The training loader from ``(epoch, start_batch)`` to ``end_epoch``; built once, workers persist.

        One epoch by default; the training loop asks for all of its epochs at once so that the
        workers run on over epoch boundaries. ``max_batches`` cuts every epoch short.
        ``in_process=True`` gives a loader without worker processes that makes the same batches
        (same cache lanes), for tools that look at the training data.
        """
        self.sampler.set_epoch(epoch, start_batch, end_epoch, max_batches)
        workers = 0 if in_process else self.num_workers
        if workers > 0:
            one_opencv_thread()
        if workers not in self._train_loaders:
            if self._train_set is None:
                self._train_set = AugmentedDataset(self.train_set, self.augment, self.sampler, lanes=self.num_workers)
            self._train_loaders[workers] = DataLoader(
                self._train_set,
                batch_size=self.batch_size,
                sampler=self.sampler,
                num_workers=workers,
                collate_fn=partial(collate, meta=False),
                pin_memory=self.pin_memory,
                drop_last=True,
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                worker_init_fn=ignore_sigterm,
            )
        return self._train_loaders[workers]

    def val_loader(self) -> DataLoader:
        """Validation loader in a fixed order (letterboxed to ``img_size``)."""
        if self.num_workers > 0:
            one_opencv_thread()
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=min(self.num_workers, 2),
            collate_fn=collate,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_sigterm,
        )
