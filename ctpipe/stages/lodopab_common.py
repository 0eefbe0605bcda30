"""Pieces shared by the LoDoPaB stages (fbp_window, fbp_unet): data splits, geometry, metric columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ctpipe.data.shards import read_manifest
from ctpipe.metrics import mae, metric_column, psnr, ssim
from ctpipe.models.learnable_fbp import LearnableFBP
from ctpipe.ops.geometry import ParallelBeamGeometry
from ctpipe.stages.base import Evaluation, MetricFn, Predictor

LODOPAB_FIELDS = ("sinogram", "image")
HANN_MODEL = "fbp_hann"  # the published LoDoPaB baseline (Hann window, frequency scaling 0.641) in eval tables


def shard_geometry(root: str | Path) -> ParallelBeamGeometry:
    """The ParallelBeamGeometry recorded in a shard set's manifest."""
    geometry = read_manifest(root).geometry
    if not geometry:
        raise ValueError(f"shard set {root} records no geometry in its manifest; re-run `ctpipe prep lodopab`")
    return ParallelBeamGeometry.from_dict(geometry)


def hann_predictor(geometry: ParallelBeamGeometry, padding: bool, device: torch.device) -> Predictor:
    """The :data:`HANN_MODEL` baseline as an evaluation predictor: sinogram -> FBP-Hann-0.641 image."""
    baseline = LearnableFBP.hann_baseline(geometry, padding).to(device).eval()
    return lambda batch: baseline(batch["sinogram"])


def lodopab_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample metrics with the data range in every name: fixed range 1 and LoDoPaB's per-image range."""
    return {
        metric_column("psnr", 1.0): psnr(pred, target, data_range=1.0),
        metric_column("psnr", "per_image"): psnr(pred, target, data_range="per_image"),
        metric_column("ssim", 1.0): ssim(pred, target, data_range=1.0),
        metric_column("ssim", "per_image"): ssim(pred, target, data_range="per_image"),
        "mae": mae(pred, target),
    }


def _image_target(cfg: Any, task: Any, model: str) -> str:
    return "image"


def _lodopab_metric(cfg: Any) -> MetricFn:
    return lodopab_metrics


# Every LoDoPaB model is scored per image against the ground-truth image with the same metric columns.
LODOPAB_EVALUATION: Evaluation[Any, Any] = Evaluation(target=_image_target, metric=_lodopab_metric)
