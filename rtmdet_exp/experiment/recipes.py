"""Per-variant values of the paper's recipe (spec section 4), read by the configs through ``${paper:key}``.

The rest of the recipe is the same for every variant and is the schema's default
(:mod:`rtmdet_exp.experiment.schema`); ``conf/experiment/paper.yaml`` selects the data and
augmentation settings across groups, and ``conf/augment/rtmdet.yaml`` reads these values for the
variant of ``model.variant``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PAPER", "PaperVariantRecipe", "paper_value"]


@dataclass(frozen=True)
class PaperVariantRecipe:
    """What mmdet's ``rtmdet_<variant>_8xb32-300e_coco.py`` sets differently per variant."""

    lsj_ratio: tuple[float, float]  # RandomResize ratio_range, stage 1 and 2 ("large scale jitter")
    mosaic_cache: int  # CachedMosaic max_cached_images
    mosaic_random_pop: bool  # CachedMosaic random_pop (False = FIFO)
    mixup_prob: float  # CachedMixUp prob
    mixup_cache: int  # CachedMixUp max_cached_images
    mixup_random_pop: bool  # CachedMixUp random_pop
    imagenet_backbone: str | None  # the ImageNet CSPNeXt checkpoint the paper starts from (none ships)


_SMALL = dict(lsj_ratio=(0.5, 2.0))
_LARGE = dict(lsj_ratio=(0.1, 2.0), mosaic_cache=40, mosaic_random_pop=True, mixup_prob=1.0, mixup_cache=20,
              mixup_random_pop=True, imagenet_backbone=None)

PAPER: dict[str, PaperVariantRecipe] = {
    "tiny": PaperVariantRecipe(**_SMALL, mosaic_cache=20, mosaic_random_pop=False, mixup_prob=0.5, mixup_cache=10,
                               mixup_random_pop=False, imagenet_backbone="cspnext-tiny_imagenet_600e.pth"),
    "s": PaperVariantRecipe(**_SMALL, mosaic_cache=40, mosaic_random_pop=True, mixup_prob=1.0, mixup_cache=20,
                            mixup_random_pop=True, imagenet_backbone="cspnext-s_imagenet_600e.pth"),
    "m": PaperVariantRecipe(**_LARGE),
    "l": PaperVariantRecipe(**_LARGE),
    "x": PaperVariantRecipe(**_LARGE),
}


def paper_value(variant: str | None, key: str) -> Any:
    """``PAPER[variant].key`` with errors that name the config keys involved."""
    if variant not in PAPER:
        raise ValueError(
            f"model.variant is {variant!r}: the paper's per-variant values exist for {', '.join(PAPER)} "
            f"(choose model=rtmdet_<variant>)"
        )
    values = asdict(PAPER[variant])
    if key not in values:
        raise ValueError(f"${{paper:{key}}}: no such per-variant value; valid: {', '.join(values)}")
    value = values[key]
    return list(value) if isinstance(value, tuple) else value
