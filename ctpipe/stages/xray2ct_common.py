"""Pieces shared by the X-ray -> CT stages (``stage1_64``, ``refine_256``, ``direct_256``) and their inference.

Data: a shard set written by :func:`ctpipe.data.drr_prep.prep_drr` with fields ``xray`` ``(2, n, n)``
(frontal, lateral), ``volume_{s}`` ``(s, s, s)`` in [0, 1] (HU window ``hu_window`` mapped linearly onto
[0, 1] and clipped) and ``fov_mm``. :class:`ctpipe.data.datasets.ShardDataset` adds a leading channel axis
to every field, so a batch holds ``xray`` as ``(B, 1, 2, n, n)``: :func:`xray_input` squeezes that axis to
the ``(B, 2, n, n)`` the networks take. Volumes come out ``(B, 1, s, s, s)``, as the networks want.

Metrics (:func:`volume_metrics`): every prediction is clamped to [0, 1] (the window) and scored per volume
with the SAME code: 3D PSNR and true 3D SSIM with ``data_range=1`` (the [0, 1] window; columns
``psnr[range=1]``, ``ssim[range=1]``), MAE on [0, 1] (``mae``) and in HU (``mae_hu`` = MAE x window width).
The CSVs also carry the HU window (``hu_window_low``, ``hu_window_high``) and the grid edge the metric was
computed on (``eval_size``), so a 64^3 row can never be mistaken for a 256^3 one. The baselines and the
evaluation spec built on these metrics are in :mod:`ctpipe.stages.xray2ct_evaluation`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, Mapping, Sequence, TypeVar

import torch
from torch import Tensor, nn

from ctpipe.checkpoint import RunCheckpoint
from ctpipe.config import ConfigError, SchedulerConfig
from ctpipe.data.shards import read_manifest
from ctpipe.intensity import XRAY2CT_HU_WINDOW
from ctpipe.losses import VolumeLoss, VolumeLossConfig
from ctpipe.metrics import (
    X2CT_PSNR_COLUMN,
    X2CT_SSIM_COLUMN,
    X2CT_SSIM_WINDOW,
    mae,
    metric_column,
    psnr,
    psnr_x2ct,
    ssim,
    ssim2d_x2ct,
)
from ctpipe.models.lift_ct import LIFT_CPU, LIFT_TINY, LiftCTConfig
from ctpipe.models.stage1_net import Stage1Network
from ctpipe.models.xray2ct import XRAY2CT_TINY, XRay2CTConfig
from ctpipe.stages.base import freeze
from ctpipe.task import Stepper


XRAY_FIELD = "xray"

STAGE1_PRESETS: dict[str, XRay2CTConfig] = {"default": XRay2CTConfig(), "tiny": XRAY2CT_TINY}
LIFT_PRESETS: dict[str, LiftCTConfig] = {"default": LiftCTConfig(), "cpu": LIFT_CPU, "tiny": LIFT_TINY}


# ---- configuration ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XRayDataConfig:
    """Shard set and fields. ``volume_field`` is stage 1's grid, ``high_field`` the high-resolution target.

    ``high_field`` may be absent from the shard set for ``stage1_64`` (then no trilinear row is written);
    ``refine_256`` and ``direct_256`` need it. ``hu_window`` must equal the shard set's (checked)."""

    root: str = "data/xray2ct/shards"
    train_split: str = "train"
    val_split: str = "validation"
    test_split: str = "test"
    batch_size: int = 8                 # per GPU (per rank)
    eval_batch_size: int = 2
    num_workers: int = 4
    volume_field: str = "volume_64"
    high_field: str = "volume_256"
    hu_window: tuple[float, float] = XRAY2CT_HU_WINDOW


@dataclass(frozen=True)
class Stage1ModelConfig:
    """``architecture``: ``vit`` (the hybrid ViT :class:`XRay2CT64`) or ``lift`` (the geometry-aware
    :class:`ctpipe.models.lift_ct.LiftCT`). ``preset``: ``default`` (vit about 15M parameters), ``tiny``
    (tests), ``cpu`` (lift only: the CPU demo's 32^3 size) or ``custom`` (``network`` for vit,
    ``lift_network`` for lift)."""

    preset: Literal["default", "tiny", "cpu", "custom"] = "default"
    network: XRay2CTConfig | None = None
    architecture: Literal["vit", "lift"] = "vit"
    lift_network: LiftCTConfig | None = None


def resolve_stage1_network(model: Stage1ModelConfig, gradient_checkpointing: bool = False) -> Stage1Network:
    """The network config (XRay2CTConfig or LiftCTConfig) a stage-1 model config describes."""
    if model.architecture == "lift":
        return _resolve_lift_network(model, gradient_checkpointing)
    if model.lift_network is not None:
        raise ConfigError("model.lift_network is only used with model.architecture='lift'; remove it")
    if model.preset == "cpu":
        raise ConfigError("model.preset='cpu' exists for model.architecture='lift' only; use default, tiny or custom")
    network = preset_or_custom(model.preset, model.network, STAGE1_PRESETS, "network", "XRay2CTConfig")
    return dataclasses.replace(network, gradient_checkpointing=gradient_checkpointing)


def _resolve_lift_network(model: Stage1ModelConfig, gradient_checkpointing: bool) -> LiftCTConfig:
    if model.network is not None:
        raise ConfigError("model.network holds ViT fields; with model.architecture='lift' use model.lift_network")
    network = preset_or_custom(model.preset, model.lift_network, LIFT_PRESETS, "lift_network", "LiftCTConfig")
    return dataclasses.replace(network, gradient_checkpointing=gradient_checkpointing)


# The 256^3 stages' shared defaults (refine_256, direct_256): multi-scale L1 + edge, cosine schedule down to 1e-6.
HIGH_RES_LOSS = VolumeLossConfig(l1=1.0, edge=0.1, scale_weights=(0.25, 0.5, 1.0))
COSINE_SCHEDULE = SchedulerConfig(name="cosine", min_lr=1e-6)


N = TypeVar("N")


@dataclass(frozen=True)
class NetworkChoice(Generic[N]):
    """``model`` of a 256^3 stage: a named network preset (``default``, ``tiny``), or ``custom`` with the
    network's own fields in ``network``. A stage uses it as ``NetworkChoice[ItsNetworkConfig]``."""

    preset: Literal["default", "tiny", "custom"] = "default"
    network: N | None = None

    def resolve(self, presets: Mapping[str, N], kind: str) -> N:
        """The named preset, or ``network`` for ``custom``; ``kind`` names the network config in errors."""
        return preset_or_custom(self.preset, self.network, presets, "network", kind)


def preset_or_custom(preset: str, custom: Any, presets: Mapping[str, Any], field: str, kind: str) -> Any:
    """``model.<field>`` for ``model.preset='custom'``, else the named preset; a stray ``model.<field>`` is refused."""
    if preset == "custom":
        if custom is None:
            raise ConfigError(f"model.preset='custom' needs model.{field} (the {kind} fields)")
        return custom
    if custom is not None:
        raise ConfigError(f"model.{field} is only used with model.preset='custom' (preset is {preset!r}); "
                          f"remove model.{field} or set model.preset=custom")
    return presets[preset]


# ---- data ------------------------------------------------------------------------------------------------
def field_size(root: str | Path, field: str) -> int:
    """Edge length of a cubic ``volume_*`` field or of the (square) ``xray`` field of a shard set."""
    manifest = read_manifest(root)
    if field not in manifest.fields:
        raise KeyError(f"shard set {root} has no field {field!r} (it has {sorted(manifest.fields)}); re-run "
                       "`ctpipe prep drr` with the matching --volume-size, or change data.volume_field/high_field")
    return int(manifest.fields[field].shape[-1])


def has_field(root: str | Path, field: str) -> bool:
    return field in read_manifest(root).fields


def check_shard_set(cfg: XRayDataConfig, xray_size: int) -> None:
    """The shard set's HU window and X-ray size must be what the config and model expect."""
    manifest = read_manifest(cfg.root)
    window = tuple(float(v) for v in manifest.attrs.get("hu_window", XRAY2CT_HU_WINDOW))
    if window != tuple(cfg.hu_window):
        raise ConfigError(f"shard set {cfg.root} uses the HU window {window}, the config says data.hu_window="
                          f"{tuple(cfg.hu_window)}; set data.hu_window={list(window)}")
    have = field_size(cfg.root, XRAY_FIELD)
    if have != xray_size:
        raise ConfigError(f"shard set {cfg.root} holds {have}^2 X-rays, the network expects xray_size={xray_size}; "
                          "re-run `ctpipe prep drr --xray-size` or change the model")


def xray_input(batch: Mapping[str, Any]) -> Tensor:
    """``(B, 1, 2, n, n)`` (ShardDataset's channel axis) -> ``(B, 2, n, n)``; 4D input passes unchanged."""
    xray = batch[XRAY_FIELD]
    if xray.dim() == 5 and xray.shape[1] == 1:
        return xray[:, 0]
    if xray.dim() == 4:
        return xray
    raise ValueError(f"expected X-rays (B, 1, 2, n, n) or (B, 2, n, n), got {tuple(xray.shape)}")


# ---- a trained model, ready for inference ------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedVolumeModel:
    """A trained X-ray -> CT network (eval mode, frozen) and what inference needs to know about it.

    Calling it maps its input (X-rays ``(B, 2, n, n)``, or for ``refine_256`` a stage-1 volume) to the
    ``(B, 1, s, s, s)`` volume at ``output_size``, float32 clamped to [0, 1] (the training window)."""

    model: nn.Module
    run: RunCheckpoint
    hu_window: tuple[float, float]
    output_size: int

    @torch.no_grad()
    def __call__(self, inputs: Tensor) -> Tensor:
        out = self.model(inputs)
        return (out[self.output_size] if isinstance(out, dict) else out).float().clamp(0.0, 1.0)


def trained_volume_model(model: nn.Module, run: RunCheckpoint, output_size: int,
                         device: torch.device | str) -> TrainedVolumeModel:
    """``model`` (with the checkpoint's weights already loaded) frozen on ``device``, with its run's HU window."""
    window = tuple(float(v) for v in run.config["data"]["hu_window"])
    return TrainedVolumeModel(freeze(model, device), run, window, output_size)  # type: ignore[arg-type]


# ---- metrics ---------------------------------------------------------------------------------------------------
PSNR_COLUMN = metric_column("psnr", 1.0)
SSIM_COLUMN = metric_column("ssim", 1.0)


def volume_metrics(pred: Tensor, target: Tensor, hu_window: Sequence[float] = XRAY2CT_HU_WINDOW,
                   literature: bool = False) -> dict[str, Tensor]:
    """Per-volume PSNR / 3D SSIM (data_range=1 on the [0, 1] window), MAE ([0, 1] and HU); pred clamped to [0, 1].

    ``literature=True`` adds X2CT-GAN's conventions in their own columns (:data:`X2CT_PSNR_COLUMN`: 0..2500
    integers, PIXEL_MAX 4095; :data:`X2CT_SSIM_COLUMN`: 2D SSIM averaged over the slices of all three axes;
    NaN on grids smaller than its 7-voxel window)."""
    pred = pred.float().clamp(0.0, 1.0)
    width = float(hu_window[1]) - float(hu_window[0])
    err = mae(pred, target)
    values = {PSNR_COLUMN: psnr(pred, target, data_range=1.0), SSIM_COLUMN: ssim(pred, target, data_range=1.0),
              "mae": err, "mae_hu": err * width}
    if literature:
        values[X2CT_PSNR_COLUMN] = psnr_x2ct(pred, target)
        if min(pred.shape[2:]) >= X2CT_SSIM_WINDOW:
            values[X2CT_SSIM_COLUMN] = ssim2d_x2ct(pred, target)
        else:
            values[X2CT_SSIM_COLUMN] = torch.full_like(err, float("nan"))
    return values


# ---- the trainer steps every X-ray -> CT task shares ----------------------------------------------------------
class VolumeTaskSteps:
    """``train_step``, ``example_images`` and ``eval_step`` of an X-ray -> CT task.

    The task sets ``cfg``, ``loss`` (a :class:`VolumeLoss`), ``target_field`` and ``module_name`` (its trained
    module) and defines ``net_input(batch)`` (what that module takes) and ``predict(batch)`` (the final-grid
    prediction, float32); ``supervised(outputs)`` picks the output scales the loss sees (default: all)."""

    cfg: Any
    loss: VolumeLoss
    target_field: str
    module_name: str = "model"

    def net_input(self, batch: Mapping[str, Any]) -> Tensor:
        return xray_input(batch)

    def predict(self, batch: Mapping[str, Any]) -> Tensor:
        raise NotImplementedError

    def supervised(self, outputs: dict[int, Tensor]) -> dict[int, Tensor]:
        return outputs

    def train_step(self, batch: Mapping[str, Any], stepper: Stepper) -> dict[str, Tensor]:
        with stepper.autocast():
            outputs = self.supervised(stepper.module(self.module_name)(self.net_input(batch)))
            loss, terms = self.loss.multiscale(outputs, batch[self.target_field])
        stepper.backward(loss, self.module_name)
        return terms

    def example_images(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The first volume's target and prediction; TensorBoard shows their middle slices."""
        return {"target": batch[self.target_field][0], "prediction": self.predict(batch)[0].float()}

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        pred, target = self.predict(batch), batch[self.target_field]
        metrics = volume_metrics(pred, target, self.cfg.data.hu_window)
        return {"loss": self.loss.per_sample(pred, target),
                PSNR_COLUMN: metrics[PSNR_COLUMN], SSIM_COLUMN: metrics[SSIM_COLUMN], "mae": metrics["mae"]}
