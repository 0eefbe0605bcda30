"""One way to bring a cubic volume to another grid, shared by the DRR prep (``volume_<s>`` fields) and the
multi-scale volume loss (its coarse targets), so a loss scale's target is made like the prepped field of
that size."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_cube(volume: Tensor, size: int) -> Tensor:
    """``(B, C, n, n, n)`` -> ``(B, C, size, size, size)``: average pooling when ``size`` divides ``n`` (a box
    filter against aliasing), else trilinear resampling; unchanged when ``n == size``."""
    n = volume.shape[-1]
    if n == size:
        return volume
    if n % size == 0:
        return F.avg_pool3d(volume, kernel_size=n // size)
    return F.interpolate(volume, size=(size,) * 3, mode="trilinear", align_corners=False)
