"""Composite training loss built from config weights.

``total = l1 * L1 + mse * MSE + ms_ssim * (1 - MS-SSIM) + edge * EDGE + perceptual * VGG``

* ``L1`` / ``MSE``: mean absolute / squared error.
* ``1 - MS-SSIM``: piq's ``multi_scale_ssim`` (5 scales, Gaussian 11 / 1.5), which needs at least
  161 pixels per side. Smaller inputs raise a ``ValueError`` unless the config chooses the
  single-scale fallback explicitly (``ms_ssim_fallback="ssim"``: piq ``ssim`` with the same
  window, no downsampling; the term is then logged as ``ssim``). Both need values in
  ``[0, data_range]`` (piq asserts it), so pred and target are CLAMPED to that range for this term
  only: pixels outside it get no gradient from the SSIM term (the L1 / MSE terms still pull them).
* ``EDGE``: L1 distance between Sobel gradient magnitudes of pred and target (2D Sobel for
  images, 3D Sobel for volumes; valid convolution, no padding).
* ``VGG``: MSE between frozen VGG16 features (:mod:`ctpipe.models.vgg_features`, local weights
  only).

Volumes ``(B, C, D, H, W)``: L1, MSE and EDGE work in 3D; the SSIM and VGG terms are applied to
the axial slices (the ``D`` axis folded into the batch), since piq and VGG are 2D.

Only terms with a non-zero weight are computed. ``forward`` returns ``(total, terms)`` where
``terms`` maps each computed term name to its detached, UNWEIGHTED value, plus ``"total"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctpipe._torchvision_compat import import_piq
from ctpipe.models.vgg_features import VGG_LAYERS, VGGFeatures

__all__ = ["MS_SSIM_MIN_SIZE", "LossWeights", "CompositeLoss", "edge_loss", "sobel_magnitude"]

MS_SSIM_KERNEL = 11
MS_SSIM_SIGMA = 1.5
MS_SSIM_SCALES = 5
MS_SSIM_MIN_SIZE = (MS_SSIM_KERNEL - 1) * 2 ** (MS_SSIM_SCALES - 1) + 1  # 161
_FALLBACKS = (None, "ssim")
_EDGE_EPS = 1e-12  # inside the sqrt of the gradient magnitude: finite gradient at flat regions


@dataclass(frozen=True)
class LossWeights:
    """Weights of each term (0 switches a term off) and the settings the terms need."""

    l1: float = 1.0
    mse: float = 0.0
    ms_ssim: float = 0.0
    edge: float = 0.0
    perceptual: float = 0.0
    ms_ssim_fallback: str | None = None  # None: inputs < 161 px raise; "ssim": single-scale SSIM
    data_range: float = 1.0  # images live in [0, data_range]
    vgg_weights_path: str | None = None  # None: $CTPIPE_VGG16_WEIGHTS
    vgg_layer: str = "relu2_2"

    def __post_init__(self) -> None:
        for name in ("l1", "mse", "ms_ssim", "edge", "perceptual"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name}={value!r} must be a finite number >= 0")
        if not any(getattr(self, n) > 0 for n in ("l1", "mse", "ms_ssim", "edge", "perceptual")):
            raise ValueError(
                "all loss weights are 0: set at least one of l1, mse, ms_ssim, edge, perceptual > 0"
            )
        if self.ms_ssim_fallback not in _FALLBACKS:
            raise ValueError(f"ms_ssim_fallback={self.ms_ssim_fallback!r} must be one of {_FALLBACKS}")
        if not (math.isfinite(self.data_range) and self.data_range > 0):
            raise ValueError(f"data_range={self.data_range!r} must be > 0 (images in [0, data_range])")
        if self.vgg_layer not in VGG_LAYERS:
            raise ValueError(f"vgg_layer={self.vgg_layer!r} must be one of {sorted(VGG_LAYERS)}")


# --------------------------------------------------------------------------------------------
# edge term
# --------------------------------------------------------------------------------------------


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
    if min(x.shape[2:]) < 3:
        raise ValueError(f"edge loss needs at least 3 pixels per spatial axis, got {tuple(x.shape[2:])}")
    batch, channels = x.shape[:2]
    flat = x.reshape(batch * channels, 1, *x.shape[2:])
    conv = F.conv2d if n_spatial == 2 else F.conv3d
    grads = conv(flat, _sobel_kernels(n_spatial, x.device, x.dtype))
    magnitude = torch.sqrt((grads * grads).sum(dim=1) + _EDGE_EPS)
    return magnitude.reshape(batch, channels, *magnitude.shape[1:])


def edge_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 distance between the Sobel gradient magnitudes of ``pred`` and ``target``.

    Computed in float32 with autocast off: under bf16/fp16 autocast the two inputs may arrive in different
    dtypes (a network output and a float32 target), which the convolution refuses."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return F.l1_loss(sobel_magnitude(pred.float()), sobel_magnitude(target.float()))


# --------------------------------------------------------------------------------------------
# the composite loss
# --------------------------------------------------------------------------------------------


def _as_slices(x: Tensor) -> Tensor:
    """``(B, C, D, H, W)`` -> ``(B * D, C, H, W)``; 4D input unchanged."""
    if x.ndim == 4:
        return x
    batch, channels, depth, height, width = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(batch * depth, channels, height, width)


class CompositeLoss(nn.Module):
    """Weighted sum of the terms of :class:`LossWeights`; returns ``(total, {term: value})``."""

    def __init__(self, weights: LossWeights) -> None:
        super().__init__()
        self.weights = weights
        if weights.ms_ssim > 0:
            import_piq()  # fail at construction, not at the first step, if piq is unusable
        self.vgg = (
            VGGFeatures(weights.vgg_weights_path, weights.vgg_layer, weights.data_range)
            if weights.perceptual > 0
            else None
        )
        self._terms: dict[str, tuple[float, Callable[[Tensor, Tensor], Tensor]]] = {
            name: (weight, fn)
            for name, weight, fn in (
                ("l1", weights.l1, F.l1_loss),
                ("mse", weights.mse, F.mse_loss),
                ("ms_ssim", weights.ms_ssim, self._ssim_term),
                ("edge", weights.edge, edge_loss),
                ("perceptual", weights.perceptual, self._perceptual_term),
            )
            if weight > 0
        }

    def ssim_term_name(self, spatial_size: tuple[int, ...]) -> str:
        """``"ms_ssim"``, or ``"ssim"`` when the configured fallback applies to this size."""
        side = min(spatial_size[-2:])
        if side >= MS_SSIM_MIN_SIZE:
            return "ms_ssim"
        if self.weights.ms_ssim_fallback == "ssim":
            return "ssim"
        raise ValueError(
            f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE} px per side (5 scales, window "
            f"{MS_SSIM_KERNEL}), got {tuple(spatial_size[-2:])}. Use larger images, set "
            "ms_ssim_fallback='ssim' in the loss config to use single-scale SSIM for small "
            "images, or set the ms_ssim weight to 0."
        )

    def _ssim_term(self, pred: Tensor, target: Tensor) -> Tensor:
        piq = import_piq()
        r = self.weights.data_range
        # float32 at least: SSIM statistics in float16 (AMP) lose too much precision
        dtype = torch.promote_types(pred.dtype, torch.float32)
        x = _as_slices(pred).to(dtype).clamp(0.0, r)
        y = _as_slices(target).to(dtype).clamp(0.0, r)
        if self.ssim_term_name(tuple(x.shape[2:])) == "ms_ssim":
            value = piq.multi_scale_ssim(
                x, y, kernel_size=MS_SSIM_KERNEL, kernel_sigma=MS_SSIM_SIGMA, data_range=r, reduction="mean"
            )
        else:
            value = piq.ssim(
                x, y, kernel_size=MS_SSIM_KERNEL, kernel_sigma=MS_SSIM_SIGMA, data_range=r,
                reduction="mean", downsample=False,
            )
        return 1.0 - value

    def _perceptual_term(self, pred: Tensor, target: Tensor) -> Tensor:
        assert self.vgg is not None
        with torch.no_grad():
            target_features = self.vgg(_as_slices(target))
        return F.mse_loss(self.vgg(_as_slices(pred)), target_features)

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        total = pred.new_zeros(())
        logged: dict[str, Tensor] = {}
        for name, (weight, fn) in self._terms.items():
            value = fn(pred, target)
            total = total + weight * value
            if name == "ms_ssim":
                name = self.ssim_term_name(tuple(pred.shape[2:]))
            logged[name] = value.detach()
        logged["total"] = total.detach()
        return total, logged
