"""Importing detectron2 here: an official build as it is, or the pure-Python package without its C++ ops.

The pure-Python install (`python -m transfer.tooling.d2compat install`, the pinned `sal-detectron2` wheel minus
its CPython-3.10 `_C` extension) runs every op we use (torchvision provides NMS and ROIAlign); only the rotated-box
ops, deformable convolution and the fast COCO evaluator need `_C`. `import_detectron2()`, which every module of
ours calls before its first detectron2 import, then registers a placeholder `detectron2._C` whose attribute
access raises `D2OpUnavailable` naming the op, and `has_real_extension()` tells callers to pick the official
COCO evaluator (`use_fast_impl=False`).

Compatibility shims, each applied by `import_detectron2()` only when missing: numpy's removed aliases
(np.int/np.bool/np.float/np.str) and `PIL.Image.LINEAR`. Importing this module changes nothing.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

NUMPY_ALIASES = {"int": int, "bool": bool, "float": float, "str": str}
INSTALL = "python -m transfer.tooling.d2compat install"


class D2OpUnavailable(AttributeError):
    """A detectron2 C++/CUDA op was requested but this install has no compiled extension."""


class _MissingExtension(types.ModuleType):
    """Stands in for `detectron2._C` in a pure-Python install: any op lookup fails with a clear message."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise D2OpUnavailable(
            f"detectron2 C++ op '{name}' is not available in this pure-Python install of detectron2 "
            f"(installed by `{INSTALL}`, without its compiled extension). Use a configuration that does not need "
            f"it (e.g. no rotated boxes, no deformable convolution, COCOEvaluator(use_fast_impl=False)), or install "
            f"an official detectron2 build compiled for this torch "
            f"(https://detectron2.readthedocs.io/en/latest/tutorials/install.html)."
        )


_STATE: dict = {}


def _apply_shims() -> list[str]:
    applied = []
    import numpy as np

    for name, value in NUMPY_ALIASES.items():
        if name not in vars(np):  # (getattr would trigger numpy's deprecation __getattr__)
            setattr(np, name, value)
            applied.append(f"numpy.{name}")
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.Resampling.BILINEAR
        applied.append("PIL.Image.LINEAR")
    return applied


def _real_extension_importable() -> bool:
    existing = sys.modules.get("detectron2._C")
    if existing is not None:
        return not isinstance(existing, _MissingExtension)
    try:
        spec = importlib.util.find_spec("detectron2._C")
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    try:
        importlib.import_module("detectron2._C")
        return True
    except ImportError:  # e.g. an extension built for another python/torch
        sys.modules.pop("detectron2._C", None)
        return False


def import_detectron2() -> types.ModuleType:
    """Make `import detectron2` work here (see the module docstring) and return the detectron2 package."""
    if "module" in _STATE:
        return _STATE["module"]
    shims = _apply_shims()
    try:
        import detectron2
    except ImportError as e:
        raise ImportError(f"detectron2 is not importable ({e}); run `{INSTALL}` (install.sh does it)") from e
    real = _real_extension_importable()
    if not real:
        placeholder = _MissingExtension("detectron2._C", "placeholder: detectron2 installed without its C++ ops")
        sys.modules["detectron2._C"] = placeholder
        detectron2._C = placeholder
    _STATE.update(module=detectron2, real_extension=real, shims=shims)
    return detectron2


def has_real_extension() -> bool:
    """True when detectron2's compiled ops are available (an official build)."""
    import_detectron2()
    return bool(_STATE["real_extension"])


def applied_shims() -> list[str]:
    """The compatibility shims `import_detectron2()` applied in this process."""
    import_detectron2()
    return list(_STATE["shims"])
