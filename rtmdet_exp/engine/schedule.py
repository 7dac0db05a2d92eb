"""Per-iteration learning-rate schedules: linear warmup, then flat-cosine, cosine or constant.

The recipe (spec section 4): LinearLR from ``1e-5 * lr`` over the first 1000 iterations, flat at
``lr`` until half of training (epoch 150 of 300), then cosine annealing to ``0.05 * lr`` at the
end. Everything is expressed in iterations, so the caller derives ``total_iters``,
``warmup_iters`` and ``flat_iters`` from epochs and iterations per epoch.

The warmup multiplies the main schedule (as mmengine's chained schedulers do), so a warmup that
runs into the cosine phase still ramps smoothly.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

KINDS = ("flat_cosine", "cosine", "constant")


class FlatCosineSchedule:
    """Learning-rate multiplier as a function of the 0-based iteration (a ``LambdaLR`` lambda).

    Args:
        total_iters: iterations of the whole run; at ``it >= total_iters`` the factor is final.
        warmup_iters: iterations of the linear warmup (0 disables it).
        flat_iters: iteration at which the cosine starts (``flat_cosine`` only); counted from
            iteration 0, warmup included. Give this or ``flat_fraction``, not both.
        flat_fraction: cosine start as a fraction of ``total_iters``; 0.5 (the paper) when
            neither it nor ``flat_iters`` is given.
        min_ratio: final factor of the cosine (``eta_min / lr``), 0.05 in the recipe.
        warmup_start: factor at iteration 0 of the warmup, 1e-5 in the recipe.
        kind: ``flat_cosine`` (the recipe), ``cosine`` (cosine from iteration 0) or ``constant``.
    """

    def __init__(
        self,
        total_iters: int,
        warmup_iters: int = 1000,
        flat_iters: int | None = None,
        flat_fraction: float | None = None,
        min_ratio: float = 0.05,
        warmup_start: float = 1e-5,
        kind: str = "flat_cosine",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        if not 0 <= warmup_iters <= total_iters:
            raise ValueError(f"warmup_iters must be in [0, total_iters={total_iters}], got {warmup_iters}")
        if flat_iters is not None and flat_fraction is not None:
            raise ValueError("give flat_iters or flat_fraction, not both")
        if flat_fraction is not None and not 0.0 <= flat_fraction <= 1.0:
            raise ValueError(f"flat_fraction must be in [0, 1], got {flat_fraction}")
        if flat_iters is None:
            flat_iters = round((0.5 if flat_fraction is None else flat_fraction) * total_iters)
        if not 0 <= flat_iters <= total_iters:
            raise ValueError(f"flat_iters must be in [0, total_iters={total_iters}], got {flat_iters}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        if not 0.0 < warmup_start <= 1.0:
            raise ValueError(f"warmup_start must be in (0, 1], got {warmup_start}")
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.cosine_start = {"flat_cosine": int(flat_iters), "cosine": 0, "constant": self.total_iters}[kind]
        self.min_ratio = float(min_ratio)
        self.warmup_start = float(warmup_start)
        self.kind = kind

    def __call__(self, it: int) -> float:
        """Factor for 0-based iteration ``it`` (iterations past the end keep the final factor)."""
        if it < 0:
            raise ValueError(f"it must be >= 0, got {it}")
        it = min(it, self.total_iters)
        warm = 1.0
        if it < self.warmup_iters:
            warm = self.warmup_start + (1.0 - self.warmup_start) * it / self.warmup_iters
        if it <= self.cosine_start or self.kind == "constant":
            return warm
        progress = (it - self.cosine_start) / (self.total_iters - self.cosine_start)
        main = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm * main


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: FlatCosineSchedule) -> LambdaLR:
    """A ``LambdaLR`` over ``schedule``, to be stepped once per iteration.

    Call ``scheduler.step()`` after each ``optimizer.step()``: iteration ``i`` then trains with
    ``lr * schedule(i)``. Every param group is scaled by the same factor (their ratios stay).
    """
    return LambdaLR(optimizer, lr_lambda=schedule)
