"""Any timm CNN as the RTMDet backbone, for the backbone-swap ablation (``backbone=timm``).

The timm model is built with ``features_only=True`` and random weights; nothing is ever downloaded
(``pretrained=False`` always). Trained weights come from a local file (``pretrained_path``), loaded
with ``torch.load(weights_only=True)`` and ``strict=False``; missing and unexpected keys are logged.
The neck takes its input channels from :attr:`TimmBackbone.out_channels`, so any model whose chosen
levels have strides 8, 16 and 32 fits the rest of the detector unchanged.

timm's weights were trained on RGB images normalised with the model's own statistics (its
``pretrained_cfg``), not on mmdet's BGR ones: :attr:`TimmBackbone.input_spec` says so, and the
Detector normalises accordingly.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from rtmdet_exp.models.backbone import CSPNeXt
from rtmdet_exp.models.detector import InputSpec

__all__ = ["TimmBackbone"]

log = logging.getLogger(__name__)

REQUIRED_STRIDES: tuple[int, ...] = (8, 16, 32)
# CSPNeXt knobs that have no meaning for a timm model (they reach here when kernel=, attention= or
# arch= is combined with backbone=timm). BatchNorm settings are shared, so they are not in the set.
_CSPNEXT_ONLY = frozenset(inspect.signature(CSPNeXt).parameters) - {"bn_momentum", "bn_eps"}
# Keyword arguments that this class sets itself.
_RESERVED = frozenset({"pretrained", "features_only", "out_indices", "pretrained_cfg_overlay"})


def _close_model_names(name: str, limit: int = 8) -> list[str]:
    """A few timm model names that look like ``name`` (spelling first, then shared name parts)."""
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    for part in sorted({p for p in name.replace("-", "_").split("_") if len(p) >= 3}, key=len, reverse=True):
        if len(close) >= limit:
            break
        close += [n for n in timm.list_models(f"*{part}*") if n not in close][: limit - len(close)]
    return close


def _suggest_out_indices(reductions: Sequence[int]) -> tuple[int, ...] | None:
    """Indices of the deepest level at each required stride, or None when one is missing."""
    picked = []
    for stride in REQUIRED_STRIDES:
        found = [i for i, r in enumerate(reductions) if r == stride]
        if not found:
            return None
        picked.append(found[-1])
    return tuple(picked)


def _timm_input_spec(model: nn.Module) -> InputSpec:
    """RGB input with the model's pretrained mean/std (timm gives them on the 0..1 scale)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(m) * 255.0 for m in cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = tuple(float(s) * 255.0 for s in cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
    if len(mean) != 3 or len(std) != 3:  # a grayscale or multi-band model: nothing sensible to assume
        raise ValueError(f"timm model with {len(mean)} input channels in its pretrained_cfg; the detector feeds 3")
    return InputSpec(mean=mean, std=std, rgb=True)


def _norm_key(key: str) -> str:
    """Checkpoint key with ``_`` and ``.`` made equal: timm's feature wrapper renames ``stages.0`` to ``stages_0``."""
    return key.replace("_", ".")


def _leaves_to_levels(module: nn.Module, prefix: str, levels: list[str]) -> list[tuple[str, nn.Module]]:
    """Children in forward order, opened up where a feature level sits deeper (``blocks.3``), with
    ``_norm_key`` names."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        full = _norm_key(prefix + name)
        if any(level.startswith(full + ".") for level in levels):
            out.extend(_leaves_to_levels(child, full + ".", levels))
        else:
            out.append((full, child))
    return out


class TimmBackbone(nn.Module):
    """A timm model's stride-8, 16 and 32 feature maps.

    Args:
        model_name: a timm model name (``timm.list_models()``), e.g. ``resnet18``, ``resnet10t``,
            ``efficientnet_b0``, ``convnext_atto`` (with ``out_indices=(1, 2, 3)``).
        out_indices: which of the model's feature levels to return; their strides must be (8, 16, 32).
        pretrained_path: local weights file (a state dict, or a dict holding one under ``state_dict``
            or ``model``), loaded non-strictly; None keeps timm's random init.
        bn_momentum, bn_eps: if given, set on every BatchNorm layer of the model (so the RTMDet BN
            settings reach the whole detector); None keeps timm's.
        **timm_kwargs: further keyword arguments of ``timm.create_model`` (e.g. ``drop_path_rate``).

    Attributes:
        out_channels: channels of the returned maps (``feature_info.channels()``).
        strides: their strides, always (8, 16, 32).
        input_spec: RGB order and the model's ``pretrained_cfg`` mean/std on the 0..255 scale
            (ImageNet's when the config has none).
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] = (2, 3, 4),
        pretrained_path: str | None = None,
        bn_momentum: float | None = None,
        bn_eps: float | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        out_indices = tuple(out_indices)
        _check_args(model_name, out_indices, timm_kwargs)
        self.model_name = model_name
        try:
            self.model = timm.create_model(
                model_name, pretrained=False, features_only=True, out_indices=out_indices, **timm_kwargs
            )
        except TypeError as err:
            raise ValueError(
                f"timm model '{model_name}' rejected keyword arguments {sorted(timm_kwargs)}: {err}"
            ) from err
        except (IndexError, AssertionError, RuntimeError, ValueError) as err:
            # Most often out_indices beyond the model's levels; report the levels it has.
            raise ValueError(self._levels_message(model_name, out_indices, timm_kwargs, err)) from err

        self.out_channels: tuple[int, ...] = tuple(int(c) for c in self.model.feature_info.channels())
        self.strides: tuple[int, ...] = tuple(int(r) for r in self.model.feature_info.reduction())
        _check_strides(model_name, out_indices, self.strides, self.model.feature_info.info)
        for m in self.model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):  # timm's BatchNormAct2d included
                if bn_momentum is not None:
                    m.momentum = bn_momentum
                if bn_eps is not None:
                    m.eps = bn_eps
        self.input_spec: InputSpec = _timm_input_spec(self.model)
        if pretrained_path is not None:
            self.load_weights(pretrained_path)

    @staticmethod
    def _levels_message(
        model_name: str, out_indices: tuple[int, ...], timm_kwargs: Mapping[str, Any], err: Exception
    ) -> str:
        """Why building failed, with the model's feature levels when they can be listed."""
        try:
            probe = timm.create_model(model_name, pretrained=False, features_only=True, **timm_kwargs)
        except Exception as probe_err:  # the model cannot give feature maps at all
            return f"timm model '{model_name}' cannot return feature maps (features_only): {probe_err}"
        reductions = [int(info["reduction"]) for info in probe.feature_info.info]
        if len(reductions) < len(REQUIRED_STRIDES):
            return (
                f"timm model '{model_name}' has {len(reductions)} feature level(s) with strides {reductions}; "
                f"the detector needs {len(REQUIRED_STRIDES)} with strides {REQUIRED_STRIDES}; pick another model"
            )
        fix = _suggest_out_indices(reductions)
        how = f"use out_indices={list(fix)}" if fix is not None else "pick another model"
        return (
            f"timm model '{model_name}': out_indices={list(out_indices)} does not fit its "
            f"{len(reductions)} feature levels (indices 0..{len(reductions) - 1}, strides {reductions}); "
            f"{how} ({type(err).__name__}: {err})"
        )

    def load_weights(self, path: str | Path) -> tuple[list[str], list[str]]:
        """Load a local weights file non-strictly; returns and logs (missing, unexpected) keys.

        Keys are matched exactly, else with ``_`` and ``.`` treated alike (timm's feature wrapper
        flattens ``stages.0`` to ``stages_0``), so a checkpoint of the full classifier loads; its
        classifier weights end up in ``unexpected``.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"pretrained_path: file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"pretrained_path: cannot read {path} as a weights-only torch file: {err}") from err
        for key in ("state_dict", "model"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
        if not isinstance(state, Mapping):
            raise ValueError(f"pretrained_path: {path} holds a {type(state).__name__}, not a state dict")
        by_norm = {_norm_key(k): k for k in state}
        own_keys = list(self.model.state_dict())
        remapped: dict[str, Tensor] = {}
        used: set[str] = set()
        for key in own_keys:
            source = key if key in state else by_norm.get(_norm_key(key))
            if source is not None:
                remapped[key] = state[source]
                used.add(source)
        try:
            result = self.model.load_state_dict(remapped, strict=False)
        except RuntimeError as err:  # shape mismatches are errors even when not strict
            raise ValueError(f"pretrained_path: {path} does not fit timm model '{self.model_name}': {err}") from err
        missing = list(result.missing_keys)
        unexpected = sorted(set(state) - used)
        log.info(
            "loaded %s into %s: %d tensors, %d missing %s, %d unexpected %s",
            path, self.model_name, len(remapped), len(missing), missing[:10], len(unexpected), unexpected[:10],
        )
        return missing, unexpected

    def stage_modules(self) -> list[nn.Module]:
        """The model cut after each of its feature levels, in forward order: entry ``i`` holds the
        modules up to level ``i`` (ResNet: the stem, then ``maxpool`` + ``layer1``, then ``layer2``, ...).
        :func:`rtmdet_exp.models.freeze.freeze_backbone_stages` freezes a prefix of this list."""
        levels = [_norm_key(info["module"]) for info in self.model.feature_info.info]
        stages: list[nn.Module] = []
        current: list[nn.Module] = []
        for name, child in _leaves_to_levels(self.model, "", levels):
            current.append(child)
            if name in levels:
                stages.append(nn.ModuleList(current))
                current = []
        if current:
            stages.append(nn.ModuleList(current))
        return stages

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``x`` [B, 3, H, W] -> maps [B, out_channels[i], H / s, W / s] for s = 8, 16, 32."""
        return tuple(self.model(x))


def _check_args(model_name: str, out_indices: tuple, timm_kwargs: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the argument of :class:`TimmBackbone` that cannot work."""
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a timm model name, got {model_name!r}")
    cspnext_only = sorted(_CSPNEXT_ONLY & set(timm_kwargs))
    if cspnext_only:
        raise ValueError(
            f"{', '.join(cspnext_only)}: CSPNeXt-only option(s), not valid with the timm backbone "
            f"'{model_name}'; drop the kernel=/attention=/arch= overrides (the neck's depthwise "
            "kernel is model.neck.kernel_size)"
        )
    reserved = sorted(_RESERVED & set(timm_kwargs))
    if reserved:
        raise ValueError(
            f"{', '.join(reserved)}: set by TimmBackbone itself (never downloads); "
            "use out_indices= and pretrained_path= instead"
        )
    if not timm.is_model(model_name):
        close = _close_model_names(model_name)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models('*resnet*')"
        raise ValueError(f"model_name: '{model_name}' is not a timm model; {hint}")
    if len(out_indices) != len(REQUIRED_STRIDES) or any(isinstance(i, bool) or not isinstance(i, int)
                                                        for i in out_indices):
        raise ValueError(
            f"out_indices must be {len(REQUIRED_STRIDES)} integers (levels of strides "
            f"{REQUIRED_STRIDES}), got {out_indices!r}"
        )


def _check_strides(model_name: str, out_indices: tuple, strides: tuple[int, ...], info: Sequence[Mapping]) -> None:
    """The chosen levels must have the strides the detector's head and priors assume."""
    if strides == REQUIRED_STRIDES:
        return
    all_reductions = [int(level["reduction"]) for level in info]
    fix = _suggest_out_indices(all_reductions)
    how = (
        f"use out_indices={list(fix)}"
        if fix is not None
        else f"it has no level at some of the strides {REQUIRED_STRIDES}; pick another model"
    )
    raise ValueError(
        f"timm model '{model_name}' with out_indices={list(out_indices)} gives strides "
        f"{strides}, the detector needs {REQUIRED_STRIDES} (all levels: {all_reductions}); {how}"
    )
