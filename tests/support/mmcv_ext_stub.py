"""Stand-in for ``mmcv._ext``, the compiled extension that mmcv-lite (the pure-Python mmcv build) lacks.

mmcv's ops modules call ``ext_loader.load_ext('_ext', [names])`` at import time, which imports
``mmcv._ext`` and asserts that every named function exists. mmdet imports those ops modules while
registering its models, so without the extension ``import mmdet.models`` fails, even though
RTMDet's network forward pass (backbone, neck, head) never calls a compiled op.

:func:`install` puts a module into ``sys.modules['mmcv._ext']`` whose every attribute is a function
that raises ``NotImplementedError`` naming the op. Imports succeed; any real use of a compiled op
(NMS in mmdet's ``predict``, deformable convs, ...) fails loudly instead of returning nonsense.
A real ``mmcv._ext`` (full mmcv installed) is left alone.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

MODULE_NAME = "mmcv._ext"


def _missing_op(name: str) -> Callable[..., NoReturn]:
    """A function standing for compiled op ``name`` that refuses to run."""

    def op(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"mmcv._ext.{name} is a compiled mmcv op; this is the test stand-in for mmcv-lite "
            "(tests/support/mmcv_ext_stub.py), which only makes the imports succeed"
        )

    op.__name__ = name
    return op


class _ExtStandIn(types.ModuleType):
    """Module whose public attributes are all refusing op functions, made on first access."""

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        if name.startswith("__"):
            raise AttributeError(name)
        op = _missing_op(name)
        setattr(self, name, op)
        return op


def install() -> bool:
    """Register the stand-in as ``mmcv._ext`` unless a real one is importable; True if installed."""
    import mmcv  # noqa: F401  (the parent package must be imported before its submodule is looked up)

    if MODULE_NAME in sys.modules:
        return isinstance(sys.modules[MODULE_NAME], _ExtStandIn)
    if importlib.util.find_spec(MODULE_NAME) is not None:
        return False
    module = _ExtStandIn(MODULE_NAME, __doc__)
    # A spec lets importlib.util.find_spec / pkgutil.find_loader answer for the module in sys.modules.
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE_NAME, loader=None)
    sys.modules[MODULE_NAME] = module
    return True
