"""The one place that makes ``import torchvision`` (and so ``import piq``) work on a CPU-only torch.

PyPI's torchvision 0.28.0 wheel is a CUDA build. Importing it next to the CPU build of torch 2.13.0
fails with ``RuntimeError: operator torchvision::nms does not exist`` (pytorch/vision#9085): its
Python code registers fake kernels for ``torchvision::nms`` / ``torchvision::qnms`` whose schemas
live in the (CUDA-only) C++ extension. Defining the two schemas first lets the import succeed;
ctpipe uses no detection ops, so nothing ever calls them.

The workaround is active only when needed: if torchvision imports cleanly (CUDA torch, a fixed
wheel, or the schema already defined), nothing is registered.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive (its definitions vanish when collected)
_applied = False


def workaround_applied() -> bool:
    """True when the schema shim had to be installed in this process."""
    return _applied


def _define_missing_schemas() -> None:
    global _library, _applied
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR001 - deliberate
    for schema in _MISSING_SCHEMAS:
        name = schema.split("(", 1)[0]
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            _library.define(schema)
    _applied = True


def _purge_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Import torchvision, applying the nms/qnms schema workaround only if the plain import fails."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "__version__"):
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err) and "torchvision::qnms" not in str(err):
            raise
    _purge_partial_import()
    _define_missing_schemas()
    return importlib.import_module("torchvision")


def import_piq() -> ModuleType:
    """Import piq (which imports torchvision) through :func:`import_torchvision`."""
    import_torchvision()
    return importlib.import_module("piq")
