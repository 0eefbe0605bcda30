"""One weighted, optionally multi-scale sum of the terms of :mod:`ctpipe.losses.terms`, for 2D images and 3D volumes.

``total = sum over scales s of scale_weight_s * sum over terms t of weight_t * term_t(pred_s, target_s)``
(:func:`weighted_sum`, :func:`multiscale_sum`). A single-scale loss is the case of one scale with weight 1.
Both losses return ``(total, logged)``: ``logged`` maps each computed term of the final scale to its detached,
UNWEIGHTED value, plus ``"total"`` (:data:`TOTAL`). Only terms with a non-zero weight are computed.

* :class:`CompositeLoss` (:class:`LossWeights`, the 2D ``fbp_unet`` loss):
  ``l1 * L1 + mse * MSE + ms_ssim * (1 - MS-SSIM) + edge * EDGE + perceptual * VGG`` on one scale. Inputs
  smaller than 161 px per side raise for MS-SSIM unless the config chooses the single-scale fallback
  (``ms_ssim_fallback="ssim"``; the term is then logged as ``ssim``). Volumes ``(B, C, D, H, W)``: L1, MSE and
  EDGE work in 3D; the SSIM and VGG terms are applied to the axial slices.
* :class:`VolumeLoss` (:class:`VolumeLossConfig`, the X-ray -> CT stages):
  ``l1 * L1 + mse * MSE + ssim3d * (1 - SSIM3D) + edge * EDGE + perceptual * VGG`` per supervised scale, all in
  float32 outside autocast. Terms a scale is too small for are skipped (SSIM3D below 11 voxels, EDGE below 3);
  VGG runs on the final scale only, on the prediction clamped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ctpipe._torchvision_compat import import_piq
from ctpipe.config import ConfigError
from ctpipe.losses.terms import (
    EDGE_MIN_SIZE,
    MS_SSIM_KERNEL,
    MS_SSIM_MIN_SIZE,
    TERMS,
    ms_ssim_loss,
    perceptual_loss,
)
from ctpipe.metrics import ssim_window_size
from ctpipe.models.vgg_features import VGG_LAYERS, VGGFeatures
from ctpipe.ops.resize import resize_cube

__all__ = ["TOTAL", "CompositeLoss", "LossWeights", "VolumeLoss", "VolumeLossConfig", "multiscale_sum",
           "trainer_log", "weighted_sum"]

TOTAL = "total"
_FALLBACKS = (None, "ssim")
_COMPOSITE_TERMS = ("l1", "mse", "ms_ssim", "edge", "perceptual")
_VOLUME_TERMS = ("l1", "mse", "ssim3d", "edge", "perceptual")


# ---- the one sum -----------------------------------------------------------------------------------------------
def weighted_sum(terms: Mapping[str, Tensor], weights: Mapping[str, float], start: Tensor | float = 0) -> Tensor:
    """``start + sum_t weights[t] * terms[t]``, in the order of ``terms``."""
    return sum((weights[name] * value for name, value in terms.items()), start)  # type: ignore[return-value]


def multiscale_sum(scales: Sequence[tuple[float, Mapping[str, Tensor]]], weights: Mapping[str, float],
                   zero: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """``zero + sum_s scale_weight_s * weighted_sum(terms_s)`` over ``(scale_weight, terms)`` pairs, coarse to fine
    (a scale of weight 0 is skipped); ``logged``: the LAST scale's terms, detached, plus :data:`TOTAL`."""
    total = zero
    for scale_weight, terms in scales:
        if scale_weight > 0:
            total = total + scale_weight * weighted_sum(terms, weights)
    logged = {name: value.detach() for name, value in scales[-1][1].items()}
    logged[TOTAL] = total.detach()
    return total, logged


def trainer_log(logged: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A loss's ``logged`` as a ``train_step`` result: the terms, then :data:`TOTAL` under the trainer's ``loss``."""
    return {**{k: v for k, v in logged.items() if k != TOTAL}, "loss": logged[TOTAL]}


def _check_weights(weights: Mapping[str, float], error: type[ValueError]) -> None:
    for name, value in weights.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise error(f"loss weight {name}={value!r} must be a finite number >= 0")
    if not any(value > 0 for value in weights.values()):
        raise error(f"all loss weights are 0: set at least one of {', '.join(weights)} > 0")


# ---- 2D composite loss -----------------------------------------------------------------------------------------
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
        _check_weights(self.term_weights(), ValueError)
        if self.ms_ssim_fallback not in _FALLBACKS:
            raise ValueError(f"ms_ssim_fallback={self.ms_ssim_fallback!r} must be one of {_FALLBACKS}")
        if not (math.isfinite(self.data_range) and self.data_range > 0):
            raise ValueError(f"data_range={self.data_range!r} must be > 0 (images in [0, data_range])")
        if self.vgg_layer not in VGG_LAYERS:
            raise ValueError(f"vgg_layer={self.vgg_layer!r} must be one of {sorted(VGG_LAYERS)}")

    def term_weights(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _COMPOSITE_TERMS}


class CompositeLoss(nn.Module):
    """Weighted sum of the terms of :class:`LossWeights` on one scale; returns ``(total, {term: value})``."""

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
        self._weights = {name: w for name, w in weights.term_weights().items() if w > 0}
        bound: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
            "ms_ssim": self._ssim_term, "perceptual": self._perceptual_term}
        self._terms = {name: bound.get(name, TERMS.get(name)) for name in self._weights}

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
        multi_scale = self.ssim_term_name(tuple(pred.shape[2:])) == "ms_ssim"
        return ms_ssim_loss(pred, target, self.weights.data_range, multi_scale)

    def _perceptual_term(self, pred: Tensor, target: Tensor) -> Tensor:
        assert self.vgg is not None
        return perceptual_loss(self.vgg, pred, target)

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        terms = {name: fn(pred, target) for name, fn in self._terms.items()}
        total, logged = multiscale_sum([(1.0, terms)], self._weights, pred.new_zeros(()))
        if "ms_ssim" in logged:
            logged = {self.ssim_term_name(tuple(pred.shape[2:])) if k == "ms_ssim" else k: v
                      for k, v in logged.items()}
        return total, logged


# ---- 3D volume loss --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeLossConfig:
    """Loss weights (0 switches a term off) and multi-scale supervision.

    Per supervised scale: ``l1 * L1 + mse * MSE + ssim3d * (1 - SSIM3D) + edge * EDGE + perceptual * VGG``.
    SSIM3D is a true 3D SSIM (11-voxel window; skipped on scales smaller than 11 voxels), EDGE the L1 distance
    of 3D Sobel magnitudes (:func:`ctpipe.losses.edge_loss`), VGG the MSE of frozen VGG16 features of the
    axial slices (final scale only; needs LOCAL ImageNet weights: ``vgg_weights_path`` or
    ``$CTPIPE_VGG16_WEIGHTS``; nothing downloads, so keep ``perceptual`` at 0 unless the file exists).

    ``scale_weights`` weighs the outputs from coarse to fine; its LAST entry is the final resolution. For
    ``stage1_64``, ``k`` entries add ``k - 1`` auxiliary sigmoid heads on the last decoder stages (the
    "multi-scale" term: heads on the 128- and 64-channel stages next to the 32-channel output); for
    ``refine_256`` / ``direct_256`` up to 3 entries apply to the network's finest outputs. Coarse targets are
    the high-resolution target average-pooled to each scale.
    """

    l1: float = 1.0
    mse: float = 0.0
    ssim3d: float = 0.0
    edge: float = 0.0
    perceptual: float = 0.0
    vgg_weights_path: str | None = None
    vgg_layer: str = "relu2_2"
    scale_weights: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        _check_weights(self.term_weights(), ConfigError)
        if not self.scale_weights or any(not (math.isfinite(w) and w >= 0) for w in self.scale_weights):
            raise ConfigError(f"loss.scale_weights={self.scale_weights}: give one weight >= 0 per scale, coarse to fine")

    def term_weights(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _VOLUME_TERMS}


class VolumeLoss(nn.Module):
    """The weighted terms of :class:`VolumeLossConfig` on one or several output scales."""

    def __init__(self, cfg: VolumeLossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vgg: nn.Module | None = (VGGFeatures(cfg.vgg_weights_path, cfg.vgg_layer, 1.0) if cfg.perceptual > 0
                                      else None)
        self._weights = {name: w for name, w in cfg.term_weights().items() if w > 0}

    def _fits(self, name: str, side: int) -> bool:
        return side >= {"ssim3d": ssim_window_size(), "edge": EDGE_MIN_SIZE}.get(name, 1)

    def terms(self, pred: Tensor, target: Tensor, final: bool, per_sample: bool = False) -> dict[str, Tensor]:
        """Unweighted terms on one scale (scalars, or ``(B,)`` with ``per_sample``), in float32 outside autocast
        (SSIM statistics and the Sobel kernels must not run in bfloat16/float16). VGG only on the final scale and
        never per sample."""
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            side = min(pred.shape[2:])
            out = {name: TERMS[name](pred, target, per_sample) for name in self._weights
                   if name in TERMS and self._fits(name, side)}
            if "perceptual" in self._weights and final and not per_sample and self.vgg is not None:
                out["perceptual"] = perceptual_loss(self.vgg, pred.clamp(0.0, 1.0), target)
            return out

    def multiscale(self, outputs: Mapping[int, Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss over the finest ``len(scale_weights)`` outputs; ``target`` is the finest scale's target.

        Returns ``(total, logged)``: ``logged`` holds the final scale's unweighted terms and ``loss`` (the
        trainer's name of the total, :func:`trainer_log`)."""
        sizes = sorted(outputs)[-len(self.cfg.scale_weights):]
        if len(sizes) != len(self.cfg.scale_weights):
            raise ConfigError(f"loss.scale_weights has {len(self.cfg.scale_weights)} entries but the network gives "
                              f"{len(outputs)} outputs ({sorted(outputs)})")
        scales = [(weight, self.terms(outputs[size], resize_cube(target, size), size == sizes[-1]))
                  for size, weight in zip(sizes, self.cfg.scale_weights)]
        total, logged = multiscale_sum(scales, self._weights, target.new_zeros(()))
        return total, trainer_log(logged)

    def per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        """Validation loss per sample ``(B,)`` on one scale: the L1, MSE, SSIM3D and EDGE terms (no VGG)."""
        terms = self.terms(pred, target, final=True, per_sample=True)
        return weighted_sum(terms, self._weights, pred.new_zeros(pred.shape[0], dtype=torch.float32))
