"""The loss terms, each an unweighted scalar (a batch mean) or, where a validation loss needs it, a ``(B,)`` vector.

* ``l1`` / ``mse``: mean absolute / squared error.
* ``edge``: L1 distance between Sobel gradient magnitudes of pred and target (2D Sobel for images, 3D Sobel
  for volumes; valid convolution, no padding), in float32 with autocast off.
* ``ssim3d``: ``1 - SSIM`` with the true 3D SSIM of :func:`ssim3d`, which runs the SAME Gaussian window and
  formula as :func:`ctpipe.metrics.ssim` (:func:`ctpipe.metrics.ssim_map`) but keeps the autograd graph and
  computes in float32 at least (SSIM statistics in bfloat16/float16 lose too much precision). Unlike the
  metric it does not check that the data lie in ``[0, data_range]``: a prediction may overshoot during
  training and the gradient should still pull it back.
* ``ms_ssim``: ``1 - MS-SSIM`` of 2D images (or the axial slices of volumes) with piq's ``multi_scale_ssim``
  (5 scales, Gaussian 11 / 1.5), which needs at least :data:`MS_SSIM_MIN_SIZE` pixels per side; the explicit
  single-scale fallback is piq's ``ssim`` with the same window (logged as ``ssim``). Inputs are CLAMPED to
  ``[0, data_range]`` for this term only (piq asserts the range).
* ``perceptual``: MSE between frozen VGG16 features of the axial slices (:mod:`ctpipe.models.vgg_features`).

:data:`TERMS` is the table of the stateless terms by name; the SSIM and VGG terms need settings or a network
and are bound by the loss that uses them (:mod:`ctpipe.losses.composite`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctpipe._torchvision_compat import import_piq
from ctpipe.metrics import SSIM_K1, SSIM_K2, ssim_map, ssim_window_size

__all__ = [
    "EDGE_MIN_SIZE",
    "MS_SSIM_KERNEL",
    "MS_SSIM_MIN_SIZE",
    "MS_SSIM_SIGMA",
    "TERMS",
    "as_slices",
    "edge_loss",
    "l1_loss",
    "ms_ssim_loss",
    "mse_loss",
    "perceptual_loss",
    "sobel_magnitude",
    "ssim3d",
    "ssim3d_loss",
]

MS_SSIM_KERNEL = 11
MS_SSIM_SIGMA = 1.5
MS_SSIM_SCALES = 5
MS_SSIM_MIN_SIZE = (MS_SSIM_KERNEL - 1) * 2 ** (MS_SSIM_SCALES - 1) + 1  # 161
EDGE_MIN_SIZE = 3  # the Sobel kernel's width
_EDGE_EPS = 1e-12  # inside the sqrt of the gradient magnitude: finite gradient at flat regions

# A term: (pred, target, per_sample) -> batch mean (scalar) or, with per_sample=True, one value per sample (B,).
Term = Callable[[Tensor, Tensor, bool], Tensor]


def l1_loss(pred: Tensor, target: Tensor, per_sample: bool = False) -> Tensor:
    return (pred - target).abs().flatten(1).mean(1) if per_sample else F.l1_loss(pred, target)


def mse_loss(pred: Tensor, target: Tensor, per_sample: bool = False) -> Tensor:
    return ((pred - target) ** 2).flatten(1).mean(1) if per_sample else F.mse_loss(pred, target)


# ---- edge ------------------------------------------------------------------------------------------------------
def _sobel_kernels(n_spatial: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(n_spatial, 1, 3, ..., 3)``: derivative [-1, 0, 1] along one axis, [1, 2, 1] along the others."""
    diff = torch.tensor([-1.0, 0.0, 1.0], device=device, dtype=dtype)
    smooth = torch.tensor([1.0, 2.0, 1.0], device=device, dtype=dtype)
    kernels = []
    for axis in range(n_spatial):
        k = torch.ones((), device=device, dtype=dtype)
        for other in range(n_spatial):
            k = torch.tensordot(k, diff if other == axis else smooth, dims=0)
        kernels.append(k)
    return torch.stack(kernels).unsqueeze(1)


def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of ``(B, C, H, W)`` or ``(B, C, D, H, W)``, per channel, valid region."""
    if x.ndim not in (4, 5):
        raise ValueError(f"sobel_magnitude expects 4D or 5D input, got shape {tuple(x.shape)}")
    n_spatial = x.ndim - 2
    if min(x.shape[2:]) < EDGE_MIN_SIZE:
        raise ValueError(f"edge loss needs at least 3 pixels per spatial axis, got {tuple(x.shape[2:])}")
    batch, channels = x.shape[:2]
    flat = x.reshape(batch * channels, 1, *x.shape[2:])
    conv = F.conv2d if n_spatial == 2 else F.conv3d
    grads = conv(flat, _sobel_kernels(n_spatial, x.device, x.dtype))
    magnitude = torch.sqrt((grads * grads).sum(dim=1) + _EDGE_EPS)
    return magnitude.reshape(batch, channels, *magnitude.shape[1:])


def edge_loss(pred: Tensor, target: Tensor, per_sample: bool = False) -> Tensor:
    """L1 distance between the Sobel gradient magnitudes of ``pred`` and ``target``.

    Computed in float32 with autocast off: under bf16/fp16 autocast the two inputs may arrive in different
    dtypes (a network output and a float32 target), which the convolution refuses."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return l1_loss(sobel_magnitude(pred.float()), sobel_magnitude(target.float()), per_sample)


# ---- SSIM ------------------------------------------------------------------------------------------------------
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
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ssim_map(x, y, c1, c2).flatten(1).mean(dim=1).reshape(batch, channels).mean(dim=1)


def ssim3d_loss(pred: Tensor, target: Tensor, per_sample: bool = False) -> Tensor:
    """``1 - ssim3d`` (data in [0, 1]): the batch mean, a scalar in [0, 2], or one value per sample."""
    values = ssim3d(pred, target)
    return 1.0 - (values if per_sample else values.mean())


def as_slices(x: Tensor) -> Tensor:
    """``(B, C, D, H, W)`` -> ``(B * D, C, H, W)`` (the axial slices); 4D input unchanged."""
    if x.ndim == 4:
        return x
    batch, channels, depth, height, width = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(batch * depth, channels, height, width)


def ms_ssim_loss(pred: Tensor, target: Tensor, data_range: float, multi_scale: bool) -> Tensor:
    """``1 - MS-SSIM`` (or ``1 - SSIM`` when not ``multi_scale``) of the 2D images or axial slices, piq's code."""
    piq = import_piq()
    # float32 at least: SSIM statistics in float16 (AMP) lose too much precision
    dtype = torch.promote_types(pred.dtype, torch.float32)
    x = as_slices(pred).to(dtype).clamp(0.0, data_range)
    y = as_slices(target).to(dtype).clamp(0.0, data_range)
    if multi_scale:
        value = piq.multi_scale_ssim(
            x, y, kernel_size=MS_SSIM_KERNEL, kernel_sigma=MS_SSIM_SIGMA, data_range=data_range, reduction="mean"
        )
    else:
        value = piq.ssim(
            x, y, kernel_size=MS_SSIM_KERNEL, kernel_sigma=MS_SSIM_SIGMA, data_range=data_range,
            reduction="mean", downsample=False,
        )
    return 1.0 - value


def perceptual_loss(vgg: nn.Module, pred: Tensor, target: Tensor) -> Tensor:
    """MSE between the frozen VGG features of the axial slices of ``pred`` and ``target``."""
    with torch.no_grad():
        target_features = vgg(as_slices(target))
    return F.mse_loss(vgg(as_slices(pred)), target_features)


# The stateless terms by name (ms_ssim and perceptual need settings or a network: the losses bind them).
TERMS: dict[str, Term] = {"l1": l1_loss, "mse": mse_loss, "edge": edge_loss, "ssim3d": ssim3d_loss}
