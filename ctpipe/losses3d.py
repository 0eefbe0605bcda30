"""A differentiable 3D SSIM for volume training losses.

:func:`ssim3d` is the same quantity as :func:`ctpipe.metrics.ssim` on 5D input (true 3D SSIM, Gaussian
window sigma 1.5 truncated at 3.5 sigma = 11 taps along all three axes, K1 = 0.01, K2 = 0.03, mean over
the region where the window fits), but keeps the autograd graph and computes in float32 (at least:
under AMP the inputs are promoted, SSIM statistics in bfloat16/float16 lose too much precision).
The metric version runs in float64 under ``no_grad``; the two agree to float32 round-off (tested).

Unlike the metric, the loss does not check that the data lie in ``[0, data_range]``: a network's
prediction may overshoot during training and the gradient should still pull it back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ctpipe.metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, ssim_window_size

__all__ = ["ssim3d", "ssim3d_loss"]


def _gaussian_kernel1d(device: torch.device, dtype: torch.dtype) -> Tensor:
    radius = ssim_window_size() // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype)


def _blur3d(x: Tensor, kernel1d: Tensor) -> Tensor:
    """Separable Gaussian of ``(N, 1, D, H, W)``, valid region only."""
    taps = kernel1d.numel()
    for shape in ((taps, 1, 1), (1, taps, 1), (1, 1, taps)):
        x = F.conv3d(x, kernel1d.reshape(1, 1, *shape))
    return x


def ssim3d(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Differentiable 3D SSIM per sample, ``(B,)``, of ``(B, C, D, H, W)`` volumes (channels averaged)."""
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(f"ssim3d expects two (B, C, D, H, W) volumes of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    win = ssim_window_size()
    if min(pred.shape[2:]) < win:
        raise ValueError(f"ssim3d needs at least {win} voxels along every axis, got {tuple(pred.shape[2:])}; "
                         "set the SSIM loss weight to 0 for smaller volumes")
    if not data_range > 0:
        raise ValueError(f"ssim3d: data_range must be > 0, got {data_range}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    batch, channels = pred.shape[:2]
    x = pred.to(dtype).reshape(batch * channels, 1, *pred.shape[2:])
    y = target.to(dtype).reshape(batch * channels, 1, *pred.shape[2:])
    kernel = _gaussian_kernel1d(x.device, dtype)
    stacked = _blur3d(torch.cat([x, y, x * x, y * y, x * y], dim=0), kernel)
    mu_x, mu_y, xx, yy, xy = stacked.chunk(5, dim=0)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).reshape(batch, channels).mean(dim=1)


def ssim3d_loss(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """``1 - mean(ssim3d)`` over the batch: a scalar loss in [0, 2]."""
    return 1.0 - ssim3d(pred, target, data_range).mean()
