"""Scores of whole CT volumes in HU and normalised, as ``ctpipe infer pix2pix`` and the pix2pix evaluation
write them.

:func:`evaluate_volume` gives PSNR / SSIM (mean of 2D SSIM over axial slices) / MAE in HU (on the
clipped window, shifted to start at 0) and normalised to [0, 1], with the data range in every key (see
:mod:`ctpipe.metrics`). PSNR and SSIM are the same number in both units (the range scales with the
data); MAE differs by the factor hi - lo.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ctpipe import metrics
from ctpipe.intensity import PIX2PIX_HU_WINDOW

SSIM_CHUNK = 32  # slices per SSIM call (bounds memory for 512^2 x hundreds of slices)


def _keys(prefix: str, window: tuple[float, float]) -> dict[str, str]:
    width = window[1] - window[0]
    return {
        "psnr_hu": metrics.metric_column(f"{prefix}psnr_hu", width),
        "ssim_hu": metrics.metric_column(f"{prefix}ssim2d_hu", width),
        "mae_hu": f"{prefix}mae_hu",
        "psnr_norm": metrics.metric_column(f"{prefix}psnr_norm", 1.0),
        "ssim_norm": metrics.metric_column(f"{prefix}ssim2d_norm", 1.0),
        "mae_norm": f"{prefix}mae_norm",
    }


def _slicewise_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> float:
    """Mean 2D SSIM over the axial slices of ``(D, H, W)`` tensors, computed in chunks of slices."""
    total, count = 0.0, 0
    for start in range(0, pred.shape[0], SSIM_CHUNK):
        p, t = pred[start:start + SSIM_CHUNK, None], target[start:start + SSIM_CHUNK, None]
        values = metrics.ssim(p, t, data_range)
        total, count = total + float(values.sum()), count + int(values.numel())
    return total / count


def _scores(pred_hu: np.ndarray, target_hu: np.ndarray, window: tuple[float, float], prefix: str) -> dict[str, float]:
    keys = _keys(prefix, window)
    lo, hi = window
    # zero-based data: SSIM's luminance term depends on the zero point, so it is always computed on
    # data in [0, R] (HU - lo, or the [0, 1] normalisation), never on signed HU
    shifted = {name: torch.from_numpy(np.asarray(v, dtype=np.float64)).clamp(lo, hi) - lo
               for name, v in (("pred", pred_hu), ("target", target_hu))}
    out: dict[str, float] = {}
    for unit, scale in (("hu", 1.0), ("norm", 1.0 / (hi - lo))):
        p, t, rng = shifted["pred"] * scale, shifted["target"] * scale, (hi - lo) * scale
        out[keys[f"psnr_{unit}"]] = float(metrics.psnr(p[None, None], t[None, None], rng)[0])
        out[keys[f"ssim_{unit}"]] = _slicewise_ssim(p, t, rng)
        out[keys[f"mae_{unit}"]] = float(metrics.mae(p[None, None], t[None, None])[0])
    return out


def evaluate_volume(pred_hu: np.ndarray, target_hu: np.ndarray, window: Sequence[float] = PIX2PIX_HU_WINDOW,
                    input_hu: np.ndarray | None = None) -> dict[str, float]:
    """Scores of a predicted volume against the target, both ``(D, H, W)`` HU arrays, axial slices on axis 0.

    Both are clipped to ``window = (lo, hi)`` first (the range the network can represent), then:

    * ``psnr_hu[range=R]``, ``ssim2d_hu[range=R]`` (R = hi - lo, 4095 by default): on ``HU - lo`` in
      [0, R]; ``mae_hu``: mean |error| in HU.
    * ``psnr_norm[range=1]``, ``ssim2d_norm[range=1]``, ``mae_norm``: on ``(HU - lo) / R`` in [0, 1].

    PSNR and SSIM are therefore equal in both units (both are scale invariant once the range scales);
    ``mae_norm = mae_hu / R``. ``ssim2d`` is the mean 2D SSIM over axial slices (each slice >= 11^2).
    With ``input_hu`` the identity baseline (the input used as the prediction) is added as ``identity_*``.
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"evaluate_volume: window={tuple(window)} needs high > low")
    pred_hu, target_hu = np.asarray(pred_hu), np.asarray(target_hu)
    if pred_hu.shape != target_hu.shape or pred_hu.ndim != 3:
        raise ValueError(f"evaluate_volume: pred {pred_hu.shape} and target {target_hu.shape} must be equal (D, H, W)")
    out = _scores(pred_hu, target_hu, (lo, hi), "")
    if input_hu is not None:
        if np.shape(input_hu) != target_hu.shape:
            raise ValueError(f"evaluate_volume: input {np.shape(input_hu)} must match target {target_hu.shape}")
        out.update(_scores(np.asarray(input_hu), target_hu, (lo, hi), "identity_"))
    return out
