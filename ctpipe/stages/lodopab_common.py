"""Pieces shared by the LoDoPaB stages (fbp_window, fbp_unet): data splits, geometry, metric columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ctpipe.config import DataConfig

LODOPAB_FIELDS = ("sinogram", "image")


def shard_geometry(root: str | Path) -> Any:
    """The ParallelBeamGeometry recorded in a shard set's manifest."""
    from ctpipe.data.shards import read_manifest
    from ctpipe.ops.geometry import ParallelBeamGeometry

    manifest = read_manifest(root)
    geometry = manifest.geometry
    if not geometry:
        raise ValueError(f"shard set {root} records no geometry in its manifest; re-run `ctpipe prep lodopab`")
    return ParallelBeamGeometry.from_dict(geometry)


def load_lodopab_splits(cfg: DataConfig) -> tuple[Any, Any, Any]:
    """Train / validation / test ShardDatasets (validation and test may be None when the split is empty)."""
    from ctpipe.data.datasets import ShardDataset
    from ctpipe.data.shards import read_manifest

    splits = read_manifest(cfg.root).splits
    def load(split: str) -> Any:
        return ShardDataset(cfg.root, split, LODOPAB_FIELDS) if splits.get(split) else None

    train = load(cfg.train_split)
    if train is None:
        raise ValueError(f"shard set {cfg.root} has no samples in split {cfg.train_split!r}; splits: {sorted(splits)}")
    return train, load(cfg.val_split), load(cfg.test_split)


def lodopab_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample metrics with the data range in every name: fixed range 1 and LoDoPaB's per-image range."""
    from ctpipe.metrics import mae, metric_column, psnr, ssim

    return {
        metric_column("psnr", 1.0): psnr(pred, target, data_range=1.0),
        metric_column("psnr", "per_image"): psnr(pred, target, data_range="per_image"),
        metric_column("ssim", 1.0): ssim(pred, target, data_range=1.0),
        metric_column("ssim", "per_image"): ssim(pred, target, data_range="per_image"),
        "mae": mae(pred, target),
    }
