"""Image-quality metrics with an explicit data range: PSNR, SSIM (2D and true 3D), MAE.

Every metric that depends on a data range takes it as a REQUIRED argument, because the range
changes the number: X2CT-GAN's PSNR used ``PIXEL_MAX = 4095`` on data clipped to [0, 2500], which
inflates PSNR by 4.3 dB. Accepted ranges (:data:`DataRange`):

* a positive float ``R``: the data live in ``[0, R]`` (e.g. ``1.0`` for normalised images, ``4095``
  for HU + 1024 offset data). ``target`` is checked to lie in ``[0, R]`` (with a small tolerance);
  predictions are not checked (a network may overshoot, that is part of its error).
* a ``(low, high)`` tuple: the data live in ``[low, high]`` (e.g. ``(-1.0, 1.0)`` after Tanh);
  the range is ``high - low`` and ``target`` is checked to lie in ``[low, high]``.
* ``"per_image"``: the LoDoPaB convention, ``max(target) - min(target)`` of each sample.

Inputs are ``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes (``C`` is normally 1; metrics
are averaged over channels). Results are per sample, shape ``(B,)``, float64 (all arithmetic is
done in float64 on the inputs' device).

SSIM matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, data_range=R)``: Gaussian window sigma 1.5 truncated at 3.5 sigma
(11 taps), K1 = 0.01, K2 = 0.03, mean of the SSIM map over the region where the window fits
(``(W - 1) / 2`` pixels cropped from every border). For volumes :func:`ssim` is a true 3D SSIM
(the same separable Gaussian along all three axes, as skimage does for a 3D array). The Gaussian
window and the SSIM formula (:func:`gaussian_window`, :func:`ssim_map`) are shared with the
differentiable SSIM loss (:mod:`ctpipe.losses.terms`), which runs them in float32 with autograd.

Results are written to tables under names that carry the range (:func:`metric_column`), e.g.
``psnr[range=1]`` and ``psnr[range=per_image]``, so two numbers computed with different ranges
can never share a column; :func:`higher_is_better` tells a column's direction (the config check refuses a
``train.monitor_mode`` that contradicts it).
"""

from __future__ import annotations

import math
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DataRange",
    "PER_IMAGE",
    "RANGE_TOLERANCE",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
    "SSIM_K1",
    "SSIM_K2",
    "HIGHER_IS_BETTER",
    "check_range",
    "higher_is_better",
    "data_range_label",
    "mae",
    "metric_column",
    "psnr",
    "ssim",
    "gaussian_window",
    "ssim_formula",
    "ssim_map",
    "ssim_window_size",
    "X2CT_PSNR_COLUMN",
    "X2CT_SSIM_COLUMN",
    "psnr_x2ct",
    "ssim2d_x2ct",
]

PER_IMAGE = "per_image"
DataRange = Union[float, int, tuple[float, float], Literal["per_image"]]

RANGE_TOLERANCE = 1e-3  # relative to the range width: how far ``target`` may stray outside it
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# --------------------------------------------------------------------------------------------
# data range handling
# --------------------------------------------------------------------------------------------


def _bounds(data_range: DataRange) -> tuple[float, float] | None:
    """Validated ``(low, high)`` for a fixed range, ``None`` for ``"per_image"``."""
    if isinstance(data_range, str):
        if data_range != PER_IMAGE:
            raise ValueError(
                f"data_range={data_range!r} is not understood: pass a positive float (data in "
                f"[0, R]), a (low, high) tuple, or the string {PER_IMAGE!r}"
            )
        return None
    if isinstance(data_range, bool):
        raise TypeError("data_range must be a number, a (low, high) tuple or 'per_image', not a bool")
    if isinstance(data_range, (tuple, list)):
        if len(data_range) != 2:
            raise ValueError(f"data_range tuple must be (low, high), got {data_range!r}")
        low, high = float(data_range[0]), float(data_range[1])
    elif isinstance(data_range, (int, float)):
        low, high = 0.0, float(data_range)
    else:
        raise TypeError(
            f"data_range must be a float, a (low, high) tuple or {PER_IMAGE!r}, "
            f"got {type(data_range).__name__}"
        )
    if not (math.isfinite(low) and math.isfinite(high)) or high - low <= 0:
        raise ValueError(
            f"data_range={data_range!r} is empty or not finite: the range width must be > 0 "
            "(e.g. 1.0 for images in [0, 1], 4095 for HU+1024 data)"
        )
    return low, high


def data_range_label(data_range: DataRange) -> str:
    """Short text for a range, used in column names: ``1``, ``4095``, ``-1..1``, ``per_image``."""
    bounds = _bounds(data_range)
    if bounds is None:
        return PER_IMAGE
    low, high = bounds
    if low == 0.0:
        return f"{high:g}"
    return f"{low:g}..{high:g}"


def metric_column(name: str, data_range: DataRange | None) -> str:
    """Column name that carries the range: ``metric_column("psnr", 1.0) == "psnr[range=1]"``.

    ``data_range=None`` is for range-free metrics (MAE) and gives the bare name.
    """
    if data_range is None:
        return name
    return f"{name}[range={data_range_label(data_range)}]"


# Direction of each quantity a history or evaluation column starts with (``psnr[range=1]``, ``psnr_hu[range=4095]``,
# ``ssim2d_norm[range=1]``, ``mae_hu``, ``loss_l1``): True when higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {"psnr": True, "ssim": True, "ssim2d": True, "mae": False, "mse": False,
                                     "loss": False}


def higher_is_better(column: str) -> bool | None:
    """Whether a larger value of ``column`` is better; ``None`` when its quantity is unknown.

    ``column`` may carry the trainer's ``val_`` / ``train_`` prefix: ``higher_is_better("val_psnr[range=1]")``."""
    name = column.split("[", 1)[0]
    for prefix in ("val_", "train_"):
        name = name.removeprefix(prefix)
    return HIGHER_IS_BETTER.get(name.split("_", 1)[0])


def check_range(x: Tensor, low: float, high: float, name: str, tol: float = RANGE_TOLERANCE) -> None:
    """Raise ``ValueError`` unless all of ``x`` is finite and lies in ``[low, high]``.

    ``tol`` is relative to ``high - low``: values up to ``tol * (high - low)`` outside pass (they
    come from float round-off in normalisation, not from a wrong range).
    """
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if x.numel() == 0:
        return
    slack = tol * (high - low)
    lo, hi = float(x.min()), float(x.max())
    if lo < low - slack or hi > high + slack:
        raise ValueError(
            f"{name} values lie in [{lo:g}, {hi:g}], outside the declared data range "
            f"[{low:g}, {high:g}]. Pass the range the data really use (e.g. data_range=1.0 for "
            f"[0, 1] images, data_range=({lo:g}, {hi:g})-like bounds for signed data, or "
            f"'{PER_IMAGE}'), or normalise the data first."
        )


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.ndim not in (4, 5):
        raise ValueError(
            f"expected (B, C, H, W) images or (B, C, D, H, W) volumes, got shape {tuple(pred.shape)}"
        )


def _range_per_sample(target: Tensor, data_range: DataRange) -> Tensor:
    """Range width per sample, ``(B,)`` float64; also checks ``target`` against a fixed range."""
    bounds = _bounds(data_range)
    t = target.detach()
    if bounds is None:
        if not bool(torch.isfinite(t).all()):
            raise ValueError("target contains NaN or infinite values")
        flat = t.reshape(t.shape[0], -1).to(torch.float64)
        width = flat.amax(dim=1) - flat.amin(dim=1)
        if bool((width <= 0).any()):
            bad = torch.nonzero(width <= 0).flatten().tolist()
            raise ValueError(
                f"data_range='{PER_IMAGE}' is undefined for constant targets (samples {bad}): "
                "use a fixed data_range for such data"
            )
        return width
    low, high = bounds
    check_range(t, low, high, "target")
    return torch.full((t.shape[0],), high - low, dtype=torch.float64, device=t.device)


# --------------------------------------------------------------------------------------------
# PSNR / MAE
# --------------------------------------------------------------------------------------------


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _mse64(pred: Tensor, target: Tensor) -> Tensor:
    diff = pred.detach().to(torch.float64) - target.detach().to(torch.float64)
    return _per_sample_mean(diff * diff)


def psnr(pred: Tensor, target: Tensor, data_range: DataRange) -> Tensor:
    """Peak signal-to-noise ratio per sample in dB, ``(B,)`` float64: ``10 log10(R^2 / MSE)``.

    Identical images give ``inf``. ``data_range`` is required (see the module docstring).
    """
    _check_pair(pred, target)
    width = _range_per_sample(target, data_range)
    return 10.0 * torch.log10(width * width / _mse64(pred, target))


def mae(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error per sample, ``(B,)`` float64, in the units of the data."""
    _check_pair(pred, target)
    diff = pred.detach().to(torch.float64) - target.detach().to(torch.float64)
    return _per_sample_mean(diff.abs())


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def ssim_window_size(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> int:
    """Taps of the Gaussian window (scipy's radius ``int(truncate * sigma + 0.5)``): 11."""
    return 2 * int(truncate * sigma + 0.5) + 1


def gaussian_window(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The normalised 1D SSIM window (sigma 1.5, 11 taps), computed in float64 and cast to ``dtype``."""
    radius = ssim_window_size() // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype)


def _filter_valid(x: Tensor, kernel1d: Tensor) -> Tensor:
    """Separable filter of ``(N, 1, *spatial)`` along every spatial axis, keeping only where the window fits."""
    n_spatial = x.ndim - 2
    conv = F.conv2d if n_spatial == 2 else F.conv3d
    for axis in range(n_spatial):
        shape = [1] * n_spatial
        shape[axis] = kernel1d.numel()
        x = conv(x, kernel1d.reshape(1, 1, *shape))
    return x


def ssim_formula(mu_x: Tensor, mu_y: Tensor, var_x: Tensor, var_y: Tensor, cov: Tensor,
                 c1: Tensor | float, c2: Tensor | float) -> Tensor:
    """The SSIM map from local means, variances and covariance (Wang et al. 2004, eq. 13)."""
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim_map(x: Tensor, y: Tensor, c1: Tensor | float, c2: Tensor | float) -> Tensor:
    """SSIM map of ``(N, 1, *spatial)`` pairs with the Gaussian window over all spatial axes (valid region).

    Keeps the autograd graph and the inputs' dtype: the metrics call it on detached float64 data, the
    SSIM loss on float32 data with gradients. ``c1`` / ``c2`` are floats or ``(N, 1, ...)`` tensors."""
    win = ssim_window_size()
    if min(x.shape[2:]) < win:
        raise ValueError(f"SSIM needs at least {win} pixels along every spatial axis, got {tuple(x.shape[2:])}")
    stacked = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=0), gaussian_window(x.device, x.dtype))
    mu_x, mu_y, xx, yy, xy = stacked.chunk(5, dim=0)
    return ssim_formula(mu_x, mu_y, xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y, c1, c2)


def _ssim_core(pred: Tensor, target: Tensor, width: Tensor) -> Tensor:
    """SSIM of ``(B, C, *spatial)`` with ``width`` ``(B,)``; Gaussian window over all spatial axes."""
    batch, channels = pred.shape[:2]
    spatial = pred.shape[2:]
    x = pred.detach().to(torch.float64).reshape(batch * channels, 1, *spatial)
    y = target.detach().to(torch.float64).reshape(batch * channels, 1, *spatial)
    r = width.repeat_interleave(channels).reshape(-1, *([1] * (x.ndim - 1)))
    per_channel = _per_sample_mean(ssim_map(x, y, (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2))
    return per_channel.reshape(batch, channels).mean(dim=1)


def ssim(pred: Tensor, target: Tensor, data_range: DataRange) -> Tensor:
    """Structural similarity per sample, ``(B,)`` float64.

    4D input: 2D SSIM. 5D input: true 3D SSIM (3D Gaussian window), equal to skimage's
    ``structural_similarity`` on the 3D array. Every spatial axis needs >= 11 samples.
    """
    _check_pair(pred, target)
    width = _range_per_sample(target, data_range)
    return _ssim_core(pred, target, width)


# --------------------------------------------------------------------------------------------
# X2CT-GAN's conventions (for comparison with the literature only)
# --------------------------------------------------------------------------------------------
# X2CT-GAN (Ying et al., CVPR 2019; PerX2CT follows it) scores volumes that live in [0, 1] (HU + 1024
# clipped to [0, 2500], scaled) in two ways that differ from ctpipe's true-range metrics:
# * PSNR: both volumes mapped back to 0..2500 and truncated to integers, then PIXEL_MAX = 4095:
#   ``20 log10(4095 / sqrt(MSE))`` (100 when MSE = 0). 4095 > 2500 adds 20 log10(4095/2500) = +4.29 dB.
# * SSIM: 2D SSIM (skimage defaults of the time: 7x7 uniform window, sample covariance, K1 0.01,
#   K2 0.03, data_range 1 on the [0, 1] volumes, mean over the window-valid region) of every slice
#   along each of the three axes; the mean over the slices of an axis, then the mean of the three axes.
X2CT_PSNR_COLUMN = "psnr[x2ct:0-2500,max=4095]"
X2CT_SSIM_COLUMN = "ssim2d[x2ct:3-axis mean]"
X2CT_CT_MAX = 2500
X2CT_PIXEL_MAX = 4095.0
X2CT_SSIM_WINDOW = 7


def _check_unit_volumes(pred: Tensor, target: Tensor, name: str) -> None:
    _check_pair(pred, target)
    if pred.ndim != 5:
        raise ValueError(f"{name} expects (B, C, D, H, W) volumes in [0, 1], got shape {tuple(pred.shape)}")
    check_range(target, 0.0, 1.0, f"{name} target (X2CT-GAN's convention needs the [0, 1] window)")


def psnr_x2ct(pred: Tensor, target: Tensor) -> Tensor:
    """X2CT-GAN's PSNR per volume, ``(B,)`` float64: [0, 1] volumes -> ``int(x * 2500)``, PIXEL_MAX 4095.

    ``pred`` is clipped to [0, 1] first (X2CT-GAN clips its generator output). NOT a true-range PSNR:
    reported only in the column :data:`X2CT_PSNR_COLUMN`, beside ``psnr[range=1]``.
    """
    _check_unit_volumes(pred, target, "psnr_x2ct")

    def to_counts(v: Tensor) -> Tensor:
        return torch.trunc(v.detach().to(torch.float64).clamp(0.0, 1.0) * X2CT_CT_MAX)

    mse = _mse64(to_counts(pred), to_counts(target))
    safe = torch.where(mse == 0, torch.ones_like(mse), mse)
    value = 20.0 * torch.log10(X2CT_PIXEL_MAX / torch.sqrt(safe))
    return torch.where(mse == 0, torch.full_like(value, 100.0), value)


def _ssim2d_uniform(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """Mean 2D SSIM of ``(N, 1, H, W)`` slices with a 7x7 uniform window and sample covariance, ``(N,)``."""
    win = X2CT_SSIM_WINDOW
    if min(x.shape[-2:]) < win:
        raise ValueError(f"ssim2d_x2ct needs at least {win} voxels along every axis, got {tuple(x.shape[-2:])}")
    kernel = torch.full((1, 1, win, win), 1.0 / win**2, dtype=torch.float64, device=x.device)
    mean = lambda v: F.conv2d(v, kernel)  # noqa: E731  (window-valid region only)
    cov_norm = win**2 / (win**2 - 1.0)
    mu_x, mu_y = mean(x), mean(y)
    var_x = cov_norm * (mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (mean(y * y) - mu_y * mu_y)
    cov = cov_norm * (mean(x * y) - mu_x * mu_y)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return _per_sample_mean(ssim_formula(mu_x, mu_y, var_x, var_y, cov, c1, c2))


def ssim2d_x2ct(pred: Tensor, target: Tensor) -> Tensor:
    """X2CT-GAN's SSIM per volume, ``(B,)`` float64: the mean over the three axes of the mean 2D SSIM of the
    slices along that axis (7x7 uniform window, sample covariance, data_range 1 on [0, 1] volumes).

    ``pred`` is clipped to [0, 1] first. Reported only in the column :data:`X2CT_SSIM_COLUMN`, beside
    the true 3D ``ssim[range=1]``.
    """
    _check_unit_volumes(pred, target, "ssim2d_x2ct")
    x = pred.detach().to(torch.float64).clamp(0.0, 1.0).mean(dim=1)  # (B, D, H, W); channels are averaged
    y = target.detach().to(torch.float64).mean(dim=1)
    batch = x.shape[0]
    per_axis = []
    for axis in (1, 2, 3):
        xs = x.movedim(axis, 1).reshape(-1, 1, *[n for a, n in enumerate(x.shape) if a not in (0, axis)])
        ys = y.movedim(axis, 1).reshape(-1, 1, *[n for a, n in enumerate(y.shape) if a not in (0, axis)])
        per_axis.append(_ssim2d_uniform(xs, ys, 1.0).reshape(batch, -1).mean(dim=1))
    return torch.stack(per_axis).mean(dim=0)
