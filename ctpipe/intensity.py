"""Intensity conventions: the HU windows and the maps between HU and network units, one name per mapping.

Two conventions exist, one per experiment family; they differ on purpose and must never be mixed (a volume
mapped with one and read back with the other is off by hundreds of HU without any error):

* **X-ray -> CT** (``ctpipe prep drr``, ``stage1_64`` / ``refine_256`` / ``direct_256``, ``ctpipe infer xray2ct``):
  :data:`XRAY2CT_HU_WINDOW` = [-1024, 1476] HU (X2CT-GAN's HU + 1024 clipped to [0, 2500]) mapped linearly onto
  ``[0, 1]`` (the networks end in a sigmoid): :func:`hu_to_unit_interval` / :func:`unit_interval_to_hu`.
* **pix2pix phases** (``ctpipe prep nifti-pairs``, ``pix2pix_phase``, ``ctpipe infer pix2pix``):
  :data:`PIX2PIX_HU_WINDOW` = [-1024, 3071] HU (the 12-bit CT range) mapped linearly onto ``[-1, 1]`` (the
  generator ends in a Tanh): :func:`hu_to_symmetric_unit` / :func:`symmetric_unit_to_hu`.

Every map clips to its range first, so each pair is an exact inverse (up to float round-off) on its window.
The functions take numpy arrays or torch tensors and return the same kind.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import numpy as np
import torch

__all__ = [
    "AIR_HU",
    "PIX2PIX_HU_WINDOW",
    "XRAY2CT_HU_WINDOW",
    "check_hu_window",
    "hu_to_symmetric_unit",
    "hu_to_unit_interval",
    "symmetric_unit_to_hu",
    "unit_interval_to_hu",
]

AIR_HU = -1024.0  # the CT scale's air; the value a resampled CT is padded with
XRAY2CT_HU_WINDOW: tuple[float, float] = (-1024.0, 1476.0)
PIX2PIX_HU_WINDOW: tuple[float, float] = (-1024.0, 3071.0)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def check_hu_window(window: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` as floats; raises unless both are finite and ``high > low``."""
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"hu_window={tuple(window)!r}: need finite (low, high) with high > low, e.g. (-1024, 3071)")
    return lo, hi


def hu_to_unit_interval(hu: ArrayT, window: Sequence[float] = XRAY2CT_HU_WINDOW) -> ArrayT:
    """HU -> [0, 1] (X-ray -> CT): ``clip((hu - low) / (high - low), 0, 1)``."""
    lo, hi = check_hu_window(window)
    return ((hu - lo) / (hi - lo)).clip(0.0, 1.0)


def unit_interval_to_hu(y: ArrayT, window: Sequence[float] = XRAY2CT_HU_WINDOW) -> ArrayT:
    """[0, 1] -> HU, the inverse of :func:`hu_to_unit_interval` on the window (``y`` is clipped to [0, 1])."""
    lo, hi = check_hu_window(window)
    return y.clip(0.0, 1.0) * (hi - lo) + lo


def hu_to_symmetric_unit(hu: ArrayT, window: Sequence[float] = PIX2PIX_HU_WINDOW) -> ArrayT:
    """HU -> [-1, 1] (pix2pix): ``2 * (clip(hu, low, high) - low) / (high - low) - 1``."""
    lo, hi = check_hu_window(window)
    return (hu.clip(lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0


def symmetric_unit_to_hu(y: ArrayT, window: Sequence[float] = PIX2PIX_HU_WINDOW) -> ArrayT:
    """[-1, 1] -> HU, the inverse of :func:`hu_to_symmetric_unit` on the window (``y`` is clipped to [-1, 1])."""
    lo, hi = check_hu_window(window)
    return (y.clip(-1.0, 1.0) + 1.0) * ((hi - lo) / 2.0) + lo
