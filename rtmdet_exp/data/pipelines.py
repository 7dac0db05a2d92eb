"""The two-stage training pipeline (RTMDet: strong Mosaic/MixUp, then a weak-augmentation finetune).

How the stage switch reaches DataLoader workers
-----------------------------------------------
Persistent workers keep their own copy of the dataset (and so of its pipeline) for the whole run, so
setting an attribute on the main-process object never reaches them, and ``worker_init_fn`` runs only
once per worker. Two ways are supported, both robust:

1. **The epoch travels with the index** (what :class:`rtmdet_exp.data.datamodule.DataModule` does): its
   sampler yields ``(epoch, index)`` pairs and the dataset calls ``pipeline_for_epoch(epoch)``. Nothing is
   shared; each sample knows its own epoch, even mid-prefetch.
2. **Shared-memory epoch** for plain datasets (``CocoDetection(..., pipeline=two_stage)``):
   :class:`TwoStagePipeline` keeps the epoch in a one-element ``share_memory_()`` tensor; forked workers
   inherit the mapping and spawned workers receive a handle when DataLoader pickles the dataset. Call
   ``set_epoch(epoch)`` in the main process *before* ``iter(loader)``: persistent workers receive an
   epoch's indices only from ``iter()`` on, so every sample of the epoch sees the new value. No loader
   restart is needed.

Seeding
-------
In way 2, on its first sample in a process and whenever it sees a new epoch, the pipeline re-seeds
itself from ``seed_worker(seed, epoch, worker_id)`` and clears the Mosaic/MixUp caches, so a worker's
augmentations depend only on (seed, epoch, worker id, the indices it gets): identical with persistent or
fresh workers and after a resume. In-process loading (``num_workers=0``) counts as worker 0. In way 1 the
caller seeds (``Compose.set_rng``), e.g. per sample from ``(seed, epoch, index)``.

Presets
-------
``conf/augment/*.yaml`` target :class:`Augment`: named transform nodes (``mosaic``, ``random_resize``,
``crop``, ``hsv``, ``flip``, ``pad``, ``mixup``, ...), each a ``_target_`` node for one transform class
(``null`` disables it), and the lists ``stage1`` / ``stage2`` naming them in order.
:meth:`Augment.configure` makes the :class:`TwoStagePipeline`
with ``switch_epoch = max_epochs - stage2_epochs`` (derived, never written in a config). Sizes use
``${data.img_size}``; ``${rtmdet.mul:a,b}`` multiplies (a resolver of the experiment layer).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rtmdet_exp.data.transforms import Compose, LetterboxResize, Pad, Sample

__all__ = ["Augment", "TwoStagePipeline", "seed_worker"]

def seed_worker(base_seed: int, epoch: int, worker_id: int) -> np.random.Generator:
    """A generator that depends only on ``(base_seed, epoch, worker_id)``, all ints >= 0.

    Uses ``SeedSequence([base_seed, epoch, worker_id])``, so neighbouring seeds, epochs and workers give
    statistically independent streams (no ``seed + worker_id`` collisions).
    """
    for name, value in (("base_seed", base_seed), ("epoch", epoch), ("worker_id", worker_id)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return np.random.default_rng(np.random.SeedSequence([int(base_seed), int(epoch), int(worker_id)]))


def _current_worker_id() -> int:
    """The DataLoader worker id of this process, 0 in the main process."""
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else int(info.id)


class TwoStagePipeline:
    """Holds the stage-1 and stage-2 pipelines and applies the one of the current epoch.

    Stage 2 is active from 0-indexed epoch ``switch_epoch`` on (RTMDet: 280 of 300); with ``stage2=None``
    stage 1 runs throughout and ``switch_epoch`` is None. ``set_epoch`` writes shared memory that DataLoader
    workers read (see the module docstring), so it is safe with persistent workers.
    """

    def __init__(self, stage1: Compose, stage2: Compose | None, switch_epoch: int | None, seed: int = 0) -> None:
        if not callable(stage1):
            raise ValueError(f"stage1 must be a callable pipeline (Compose), got {type(stage1).__name__}")
        if stage2 is not None and not callable(stage2):
            raise ValueError(f"stage2 must be a callable pipeline (Compose) or None, got {type(stage2).__name__}")
        if stage2 is not None and (
            isinstance(switch_epoch, bool) or not isinstance(switch_epoch, (int, np.integer)) or switch_epoch < 0
        ):
            raise ValueError(f"switch_epoch must be an int >= 0 when stage2 is given, got {switch_epoch!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.stage1 = stage1
        self.stage2 = stage2
        self.switch_epoch: int | None = None if stage2 is None else int(switch_epoch)  # type: ignore[arg-type]
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # [1], written by set_epoch
        self._seeded_for: tuple[int, int] | None = None  # (pid, epoch) the streams were last seeded for

    @property
    def epoch(self) -> int:
        """The current 0-indexed epoch (as last set in the main process)."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the pipeline for ``epoch``; call it before iterating the loader for that epoch."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._epoch[0] = int(epoch)

    def stage_at(self, epoch: int) -> int:
        """1 or 2: the stage used at ``epoch``."""
        return 2 if self.switch_epoch is not None and epoch >= self.switch_epoch else 1

    def pipeline_for_epoch(self, epoch: int) -> Compose:
        """The stage pipeline of ``epoch``, for loaders whose sampler carries the epoch with each index."""
        return self.stage2 if self.stage_at(epoch) == 2 and self.stage2 is not None else self.stage1

    @property
    def stage(self) -> int:
        """The stage of the current epoch."""
        return self.stage_at(self.epoch)

    @property
    def active(self) -> Compose:
        """The pipeline of the current epoch."""
        return self.pipeline_for_epoch(self.epoch)

    def reseed(self, worker_id: int | None = None) -> None:
        """Seed both stages from ``seed_worker(seed, epoch, worker_id)`` and clear their caches.

        ``worker_id`` defaults to this process's DataLoader worker id. Called automatically on the first
        sample of each (process, epoch); call it directly to emulate a given worker.
        """
        wid = _current_worker_id() if worker_id is None else worker_id
        epoch = self.epoch
        stage_rngs = seed_worker(self.seed, epoch, wid).spawn(2)
        for stage, rng in zip((self.stage1, self.stage2), stage_rngs, strict=True):
            if stage is None:
                continue
            if hasattr(stage, "set_rng"):
                stage.set_rng(rng)
            if hasattr(stage, "reset"):
                stage.reset()
        self._seeded_for = (os.getpid(), epoch)

    def __call__(self, sample: Sample) -> Sample:
        if self._seeded_for != (os.getpid(), self.epoch):
            self.reseed()
        return self.active(sample)

    def __repr__(self) -> str:
        return (
            f"TwoStagePipeline(switch_epoch={self.switch_epoch}, seed={self.seed},\n"
            f"stage1={self.stage1!r},\nstage2={self.stage2!r})"
        )


class Augment:
    """The ``augment`` config group, built: named transforms plus the stage lists that order them.

    ``conf/augment/<preset>.yaml`` targets this class; Hydra builds every named transform node first and
    passes it here by name (``mosaic=CachedMosaic(...)``, ``crop=RandomCrop(...)``, ...). A node set to
    ``null`` (``augment.mixup=null``) is left out of every stage. The run's ``img_size`` and
    ``max_epochs`` are known only later, so :meth:`configure` makes the :class:`TwoStagePipeline`
    (``switch_epoch = max_epochs - stage2_epochs``) and checks the output size.

    Args:
        stage1: names of the stage-1 transforms, in order.
        stage2: names of the stage-2 transforms, in order, or None for a single stage.
        stage2_epochs: the last N epochs use stage 2 (0: stage 1 throughout).
        name: the preset's name, for logs.
        **transforms: the named transforms (callables ``sample -> sample``) or None when disabled.
    """

    def __init__(
        self,
        stage1: Sequence[str],
        stage2: Sequence[str] | None = None,
        stage2_epochs: int = 0,
        name: str = "custom",
        **transforms: Any,
    ) -> None:
        if isinstance(stage2_epochs, bool) or not isinstance(stage2_epochs, (int, np.integer)) or stage2_epochs < 0:
            raise ValueError(f"augment.stage2_epochs must be an int >= 0, got {stage2_epochs!r}")
        for key, value in transforms.items():
            if value is not None and not callable(value):
                raise ValueError(f"augment.{key} must be a transform (a _target_ node) or null, got {value!r}")
        self.name = str(name)
        self.stage2_epochs = int(stage2_epochs)
        self.transforms = transforms
        self.stage1 = self._compose(stage1, "stage1")
        self.stage2 = None if stage2 is None else self._compose(stage2, "stage2")
        self._pipeline: TwoStagePipeline | None = None

    def _compose(self, names: Sequence[str], key: str) -> Compose:
        """The enabled transforms named in ``names``, in order."""
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise ValueError(f"augment.{key} must be a list of transform names, got {names!r}")
        unknown = [n for n in names if n not in self.transforms]
        if unknown:
            raise ValueError(
                f"augment.{key} names {unknown}, which are not transforms here; known: {sorted(self.transforms)}"
            )
        return Compose([self.transforms[n] for n in names if self.transforms[n] is not None])

    def configure(self, img_size: int, max_epochs: int, seed: int = 0) -> TwoStagePipeline:
        """Make (and keep) the :class:`TwoStagePipeline` for a run of ``max_epochs`` at ``img_size``.

        Every ``Pad`` / ``LetterboxResize`` must output ``img_size`` (a preset that does not follow
        ``${data.img_size}`` fails here). When ``stage2_epochs >= max_epochs`` every epoch is stage 2
        (with a warning).
        """
        if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size < 1:
            raise ValueError(f"img_size must be a positive int, got {img_size!r}")
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, (int, np.integer)) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
        for key, stage in (("stage1", self.stage1), ("stage2", self.stage2)):
            for t in stage.transforms if stage is not None else ():
                out = t.size if isinstance(t, Pad) else (t.size, t.size) if isinstance(t, LetterboxResize) else None
                if out is not None and tuple(out) != (img_size, img_size):
                    raise ValueError(
                        f"augment.{key}: {type(t).__name__} outputs {out} but img_size is {img_size}; "
                        "sizes in augment presets must follow ${data.img_size}"
                    )
        stage2 = self.stage2 if self.stage2_epochs > 0 else None
        switch_epoch = None
        if stage2 is not None:
            if self.stage2_epochs >= max_epochs:
                warnings.warn(
                    f"augment.stage2_epochs={self.stage2_epochs} >= max_epochs={max_epochs}: every epoch uses stage 2",
                    stacklevel=2,
                )
            switch_epoch = max(max_epochs - self.stage2_epochs, 0)
        self._pipeline = TwoStagePipeline(self.stage1, stage2, switch_epoch, seed=seed)
        return self._pipeline

    @property
    def pipeline(self) -> TwoStagePipeline:
        """The configured pipeline; :meth:`configure` must have been called."""
        if self._pipeline is None:
            raise RuntimeError("Augment.configure(img_size, max_epochs) must be called before use")
        return self._pipeline

    @property
    def switch_epoch(self) -> int | None:
        """First (0-indexed) epoch of stage 2, None for a single stage."""
        return self.pipeline.switch_epoch

    def pipeline_for_epoch(self, epoch: int) -> Compose:
        """The stage pipeline used at ``epoch`` (for loaders that carry the epoch with each index)."""
        return self.pipeline.pipeline_for_epoch(epoch)

    def reset(self) -> None:
        """Clear the Mosaic/MixUp caches of both stages."""
        for stage in (self.stage1, self.stage2):
            if stage is not None:
                stage.reset()

    def __repr__(self) -> str:
        return (
            f"Augment(name={self.name!r}, stage2_epochs={self.stage2_epochs}, "
            f"stage1={self.stage1!r}, stage2={self.stage2!r})"
        )
