"""Detection losses: dense classification (``classification``) and matched-box regression (``box``)."""

from rtmdet_exp.losses.box import CIoULoss, DIoULoss, GIoULoss, IoULoss, L1Loss
from rtmdet_exp.losses.classification import BCELoss, FocalLoss, QualityFocalLoss, VarifocalLoss

__all__ = [
    "BCELoss",
    "CIoULoss",
    "DIoULoss",
    "FocalLoss",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "QualityFocalLoss",
    "VarifocalLoss",
]
