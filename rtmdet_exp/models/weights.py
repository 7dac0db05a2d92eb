"""Load trained weights into an :class:`~rtmdet_exp.models.network.RTMDetNet` (fine-tuning starts here).

Three kinds of file are understood, told apart by their keys (``source="auto"``) or named:

* ``rtmdet_exp``: our own checkpoints (:func:`rtmdet_exp.engine.checkpoint.save_checkpoint`, a dict
  with ``model`` = Detector state dict, keys ``network.*``, and ``ema`` = ``{"module": ...}``). The
  EMA weights are preferred when present, as validation used them. A bare network state dict loads too.
* ``mmdet``: mmdetection 3.x RTMDet checkpoints, ``{"meta": ..., "state_dict": {...}}`` with keys
  ``backbone.*``, ``neck.*``, ``bbox_head.*``. (mmengine's EMA hook swaps the averaged weights into
  ``state_dict`` before saving, so that is what a released file holds.)
* ``cspnext_backbone``: CSPNeXt ImageNet checkpoints as mmdet/mmpretrain publish them, keys
  ``backbone.*`` (the ImageNet classifier ``head.*`` is skipped) or bare; only the backbone is loaded.

mmdet names map onto ours one to one (the parameter counts match exactly, spec section 0):

    backbone.stage{k}.               -> backbone.stages.{k-1}.
    neck.top_down_blocks. / bottom_up_blocks. -> neck.top_down. / neck.bottom_up.
    bbox_head.                       -> head.
    .depthwise_conv. / .pointwise_conv.       -> .depthwise. / .pointwise.

Every other name (stem, CSPLayer main/short/final convs, blocks, attention.fc, SPP conv1/conv2,
cls/reg towers, rtm_cls/rtm_reg, conv/bn) is spelled the same in both.

The load is all or nothing: a missing, unexpected or mis-shaped tensor raises :class:`WeightsError`
naming the file and the keys. The one tolerated difference is the class count: the classifier
(``head.rtm_cls``) is then re-initialised with the prior-probability bias, and the report says so.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rtmdet_exp.engine.checkpoint import MAGIC, CheckpointError, load_checkpoint

__all__ = ["SOURCES", "LoadReport", "WeightsError", "load_weights", "mmdet_key_to_ours"]

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("auto", "rtmdet_exp", "mmdet", "cspnext_backbone")
_CLS_KEY = re.compile(r"^head\.rtm_cls\.\d+\.(weight|bias)$")
_MMDET_RENAMES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"^backbone\.stage([1-9]\d*)\."), lambda m: f"backbone.stages.{int(m.group(1)) - 1}."),
    (re.compile(r"^neck\.top_down_blocks\."), "neck.top_down."),
    (re.compile(r"^neck\.bottom_up_blocks\."), "neck.bottom_up."),
    (re.compile(r"^bbox_head\."), "head."),
    (re.compile(r"\.depthwise_conv\."), ".depthwise."),
    (re.compile(r"\.pointwise_conv\."), ".pointwise."),
)
_LIST_LIMIT = 20


class WeightsError(ValueError):
    """A weights file cannot be read, or does not fit the network.

    ``report`` (when the file was read) holds the missing, unexpected and mis-shaped keys.
    """

    def __init__(self, message: str, report: LoadReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path: the file.
        source: its format, one of ``rtmdet_exp``, ``mmdet``, ``cspnext_backbone``.
        loaded: network keys given values from the file.
        missing: network keys the file has no value for; after a successful load only the neck and
            head of a backbone-only file, and ``num_batches_tracked`` buffers of old files.
        unexpected: file keys the network has no place for (empty after a successful load).
        mismatched: keys whose shapes differ (after a successful load only the classifier, when the
            class count differs).
        reinitialised: network keys re-initialised instead of loaded (the classifier).
        skipped: file keys left out on purpose (ImageNet classifier, non-network Detector state).
        notes: one line per decision worth telling the user (EMA chosen, backbone only, class count).
    """

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        parts = [
            f"{self.source} weights from {self.path}: loaded {len(self.loaded)} tensors",
            f"{len(self.missing)} missing",
            f"{len(self.unexpected)} unexpected",
            f"{len(self.reinitialised)} re-initialised",
            f"{len(self.skipped)} skipped",
        ]
        return ", ".join(parts) + "".join(f"; {note}" for note in self.notes)


def mmdet_key_to_ours(key: str) -> str:
    """An mmdet RTMDet state-dict key in our network's spelling (see the module docstring)."""
    for pattern, replacement in _MMDET_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _listing(keys: list[str]) -> str:
    """The first keys, and how many more."""
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def _read(path: Path, trusted: bool) -> dict[str, Any]:
    """The file's top-level dict: our checksummed format, else a ``torch.save`` file."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    with path.open("rb") as handle:
        ours = handle.read(len(MAGIC)) == MAGIC
    try:
        if ours:
            return load_checkpoint(path, weights_only=not trusted)
        payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except CheckpointError as err:
        raise WeightsError(str(err)) from err
    except Exception as err:
        hint = "" if trusted else "; if the file is trusted, pass trusted=True to allow any pickled object"
        raise WeightsError(f"cannot read weights file {path}: {err}{hint}") from err
    if not isinstance(payload, Mapping):
        raise WeightsError(f"weights file {path} holds a {type(payload).__name__}, not a dict of tensors")
    return dict(payload)


def _state_dict(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The tensors of an mmengine-style file (under ``state_dict``) or of a bare state dict."""
    return payload["state_dict"] if isinstance(payload.get("state_dict"), Mapping) else payload


def _detect(payload: Mapping[str, Any], path: Path) -> str:
    """The format of a file from its keys."""
    model = payload.get("model")
    if isinstance(model, Mapping) and any(k.startswith("network.") for k in model):
        return "rtmdet_exp"
    state = _state_dict(payload)
    keys = [str(k) for k in state]
    if any(k.startswith("bbox_head.") for k in keys):
        return "mmdet"
    if any(k.startswith(("backbone.stages.", "network.")) for k in keys):
        return "rtmdet_exp"
    if any(re.match(r"^(backbone\.)?(stem|stage1)\.", k) for k in keys):
        return "cspnext_backbone"
    raise WeightsError(
        f"cannot tell the format of weights file {path} from its keys ({_listing(sorted(keys))}); "
        f"pass source= one of {', '.join(SOURCES[1:])}"
    )


def _ours(payload: Mapping[str, Any], notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Network tensors of our checkpoint (EMA preferred) or of a bare network state dict."""
    model = payload.get("model")
    if isinstance(model, Mapping):
        ema = payload.get("ema")
        if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
            state, which = ema["module"], "EMA weights (preferred over the raw training weights)"
        else:
            state, which = model, "raw training weights (the file has no EMA)"
        notes.append(f"used the {which}")
    else:
        state = _state_dict(payload)
    if not any(k.startswith("network.") for k in state):
        return dict(state), []
    converted = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
    return converted, sorted(k for k in state if not k.startswith("network."))


def _mmdet(payload: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Our names for an mmdet detector state dict; the data preprocessor is skipped."""
    state = _state_dict(payload)
    skipped = sorted(k for k in state if k.startswith("data_preprocessor."))
    return {mmdet_key_to_ours(k): v for k, v in state.items() if k not in skipped}, skipped


def _check_exp_on_reg(network: nn.Module, payload: Mapping[str, Any], report: LoadReport) -> None:
    """Refuse an mmdet file whose head decoded distances differently from the network's head.

    ``exp_on_reg`` leaves no trace in the weights (mmdet: True for l and x only), so the config text
    that mmengine stores in ``meta["cfg"]`` is read; without it the report carries a reminder.
    """
    ours = getattr(getattr(network, "head", None), "exp_on_reg", None)
    meta = payload.get("meta")
    text = next((meta[k] for k in ("cfg", "config") if isinstance(meta, Mapping) and isinstance(meta.get(k), str)), "")
    values = set(re.findall(r"exp_on_reg\s*=\s*(True|False)", text))
    if ours is None:
        return
    if len(values) != 1:
        note = (
            f"the file does not record exp_on_reg (mmdet uses it for l and x only); the network has "
            f"exp_on_reg={ours}: check that it matches the checkpoint's variant"
        )
        report.notes.append(note)
        log.warning("%s: %s", report.path, note)
        return
    theirs = values.pop() == "True"
    if theirs != bool(ours):
        raise WeightsError(
            f"weights file {report.path} was trained with exp_on_reg={theirs} in its head (meta cfg) but the "
            f"network has exp_on_reg={ours}, so its box distances would be wrong; set "
            f"model.head.exp_on_reg={str(theirs).lower()}. Nothing was loaded.",
            report,
        )


def _backbone(payload: Mapping[str, Any], notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Our names for a CSPNeXt ImageNet checkpoint; everything outside the backbone is skipped."""
    state = _state_dict(payload)
    prefixed = any(k.startswith("backbone.") for k in state)
    kept = {k: v for k, v in state.items() if k.startswith("backbone.")} if prefixed else dict(state)
    notes.append("backbone only: the neck and head keep their initialisation")
    converted = {mmdet_key_to_ours(k if prefixed else f"backbone.{k}"): v for k, v in kept.items()}
    return converted, sorted(k for k in state if k not in kept)


def _tied_groups(network: nn.Module) -> list[list[str]]:
    """Groups of state-dict keys naming one tensor (the SepBN head's shared convs)."""
    by_storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, tensor in network.state_dict().items():
        if tensor.numel():
            by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(key)
    return [keys for keys in by_storage.values() if len(keys) > 1]


def _check_fit(network: nn.Module, state: dict[str, Any], report: LoadReport) -> tuple[list[str], int | None]:
    """Fill ``report.missing`` / ``unexpected`` / ``mismatched`` and raise unless ``state`` fits the network.

    Returns the classifier keys to re-initialise and the file's class count when the class count is
    the only difference. Missing ``num_batches_tracked`` buffers are harmless (only used with
    momentum=None); for a backbone-only file the whole neck and head are expected to be missing.
    """
    own = network.state_dict()
    scope = "backbone." if report.source == "cspnext_backbone" else ""
    # Lists keep the network's order (stem first), which reads better than sorted names.
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own or not isinstance(state[k], Tensor)]
    shapes = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state}
    shapes = {k: pair for k, pair in shapes.items() if k not in report.unexpected}
    report.mismatched = [k for k, (theirs, ours) in shapes.items() if theirs != ours]
    class_keys = [k for k in report.mismatched if _CLS_KEY.match(k) and shapes[k][0][1:] == shapes[k][1][1:]]
    old_counts = {shapes[k][0][0] for k in class_keys}
    class_only = class_keys == [k for k in own if _CLS_KEY.match(k)] and len(old_counts) == 1
    bad_missing = [k for k in report.missing if k.startswith(scope) and not k.endswith("num_batches_tracked")]
    bad_shapes = [k for k in report.mismatched if not (class_only and k in class_keys)]
    problems = []
    if bad_missing:
        problems.append(f"{len(bad_missing)} missing key(s): {_listing(bad_missing)}")
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected key(s): {_listing(report.unexpected)}")
    if bad_shapes:
        problems.append(
            f"{len(bad_shapes)} shape mismatch(es): "
            + _listing([f"{k} file {list(shapes[k][0])} vs network {list(shapes[k][1])}" for k in bad_shapes])
        )
    for group in _tied_groups(network):
        present = [k for k in group if k in shapes and k not in report.mismatched]
        if any(not torch.equal(state[present[0]], state[k]) for k in present[1:]):
            problems.append(
                f"the network ties {', '.join(group)} (shared head convs) but the file holds different values "
                "for them; build the network with the file's head sharing (share_conv)"
            )
    if problems:
        raise WeightsError(
            f"weights file {report.path} ({report.source}) does not fit the network: "
            + "; ".join(problems) + ". Nothing was loaded.",
            report,
        )
    return (class_keys, old_counts.pop()) if class_only else ([], None)


def _reinit_classifier(network: nn.Module) -> None:
    """Fresh ``rtm_cls`` predictors: weights normal(0, 0.01), bias -log((1 - p) / p) (the head's init)."""
    head = network.head
    prior = float(getattr(head, "prior_prob", 0.01))
    with torch.no_grad():
        for conv in head.rtm_cls:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.constant_(conv.bias, -math.log((1.0 - prior) / prior))


def load_weights(
    network: nn.Module, path: str | Path, *, source: str = "auto", trusted: bool = False
) -> LoadReport:
    """Load the weights in ``path`` into ``network`` (an RTMDetNet), converting names; see the module doc.

    Args:
        network: the network to fill in place.
        path: a weights file (our checkpoint, an mmdet RTMDet checkpoint or a CSPNeXt ImageNet one).
        source: ``auto`` (tell from the keys) or one of ``rtmdet_exp``, ``mmdet``, ``cspnext_backbone``.
        trusted: allow arbitrary pickled objects in the file (``torch.load(weights_only=False)``).

    Raises:
        WeightsError: the file is missing or unreadable, or does not fit the network other than
            by its class count; nothing is loaded then.
    """
    path = Path(path)
    if source not in SOURCES:
        raise WeightsError(f"source must be one of {', '.join(SOURCES)}, got {source!r} (loading {path})")
    payload = _read(path, trusted)
    kind = _detect(payload, path) if source == "auto" else source
    report = LoadReport(path=str(path), source=kind)
    if kind == "rtmdet_exp":
        state, report.skipped = _ours(payload, report.notes)
    elif kind == "mmdet":
        state, report.skipped = _mmdet(payload)
        _check_exp_on_reg(network, payload, report)
    else:
        state, report.skipped = _backbone(payload, report.notes)
    reinit, old_classes = _check_fit(network, state, report)
    to_load = {k: v for k, v in state.items() if k not in reinit}
    network.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    if reinit:
        _reinit_classifier(network)
        report.reinitialised = sorted(reinit)
        message = (
            f"class count {old_classes} in the file, {network.head.num_classes} in the network: "
            "re-initialised the classifier (head.rtm_cls)"
        )
        report.notes.append(message)
        log.warning("%s: %s", path, message)
    return report  # the caller reports it (train() logs it under model.init_from)
