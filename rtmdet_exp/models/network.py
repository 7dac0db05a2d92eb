"""RTMDet network: CSPNeXt backbone -> CSPNeXtPAFPN neck -> RTMDet head
(https://arxiv.org/abs/2212.07784).

The backbone is built by the caller; the neck and head are factories (``functools.partial`` or
Hydra ``_partial_: true``) so their input channels are derived from the part before them instead of
being restated in the config.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["RTMDetNet"]


class RTMDetNet(nn.Module):
    """Images [B, 3, H, W] -> head outputs ``(cls_scores, bbox_dists)``, lists over levels.

    Args:
        backbone: module returning a tuple of maps; must expose ``out_channels`` (tuple of ints).
        neck: factory called as ``neck(in_channels=backbone.out_channels)``; the result exposes
            ``out_channels`` (int).
        head: factory called as ``head(in_channels=neck.out_channels, num_classes=num_classes)``.
        num_classes: number of object classes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: Callable[..., nn.Module],
        head: Callable[..., nn.Module],
        num_classes: int,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        for name, value in (("neck", neck), ("head", head)):
            if isinstance(value, nn.Module) or not callable(value):
                raise ValueError(
                    f"{name} must be a factory (functools.partial or Hydra `_partial_: true`), "
                    f"got {type(value).__name__}"
                )
        if not hasattr(backbone, "out_channels"):
            raise ValueError(f"backbone {type(backbone).__name__} must expose `out_channels`")
        self.backbone = backbone
        self.neck = neck(in_channels=backbone.out_channels)
        self.head = head(in_channels=self.neck.out_channels, num_classes=num_classes)
        self.num_classes = num_classes
        back_strides = getattr(backbone, "strides", None)
        head_strides = getattr(self.head, "strides", None)
        if back_strides is not None and head_strides is not None and tuple(back_strides) != tuple(head_strides):
            raise ValueError(f"head strides {tuple(head_strides)} differ from backbone strides {tuple(back_strides)}")
        self.strides: tuple[int, ...] | None = tuple(head_strides) if head_strides is not None else None

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.head(self.neck(self.backbone(images)))

    def parts(self) -> dict[str, nn.Module]:
        """The three parts by name, for per-part parameter/MAC breakdowns and parameter groups."""
        return {"backbone": self.backbone, "neck": self.neck, "head": self.head}
