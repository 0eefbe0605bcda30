"""Stage ``refine_256``: refine a FROZEN stage-1 64^3 prediction to 256^3 with :class:`ResidualUpsampler3D`.

The stage-1 network is loaded from ``stage1_checkpoint`` (a ``stage1_64`` run's ``checkpoints/best.pt``), put
in eval mode with ``requires_grad=False`` and run under ``no_grad``; it is not one of the task's modules (not
trained, not saved again), but the SHA-256 of its checkpoint is part of the run's fingerprint, so a run cannot
silently resume on top of a different stage-1 model.

The high-resolution field must be 4x (the 256^3 design: 64 -> 256) or 2x the stage-1 grid; at 2x (small CPU
test sets) the 4x branch is frozen and its output ignored.

ResidualUpsampler3D is residual over trilinear upsampling with zero-initialised heads, so before training
``refine_256`` == ``stage1_64_trilinear`` bit for bit. Loss: multi-scale (64/128/256 outputs against the
256^3 target average-pooled to each scale, ``loss.scale_weights``), ``L1 + edge (+ optional 3D SSIM)``.

Final evaluation rows, on the high-resolution grid with the same metric code: ``stage1_64_trilinear``,
``refine_256`` and the baselines ``mean_volume`` and ``nearest_xray`` (:func:`~ctpipe.stages.xray2ct_common.with_baselines`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ctpipe.config import ConfigError, OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.distributed import DistEnv, ddp_find_unused
from ctpipe.losses import VolumeLoss, VolumeLossConfig
from ctpipe.models.residual_upsampler3d import (RESIDUAL_UPSAMPLER3D_TINY, ResidualUpsampler3D, ResidualUpsampler3DConfig,
                                                trilinear_baseline)
from ctpipe.stages.base import Stage
from ctpipe.stages.stage1_64 import TRILINEAR_MODEL, load_best
from ctpipe.stages.xray2ct_common import (
    PSNR_COLUMN,
    SSIM_COLUMN,
    XRAY_FIELD,
    XRayDataConfig,
    check_shard_set,
    evaluate_volume_models,
    evaluation_splits,
    field_size,
    load_stage1,
    load_xray_splits,
    volume_metrics,
    with_baselines,
    xray_input,
)

REFINE_MODEL = "refine_256"
REFINE_PRESETS: dict[str, ResidualUpsampler3DConfig] = {"default": ResidualUpsampler3DConfig(),
                                                        "tiny": RESIDUAL_UPSAMPLER3D_TINY}


@dataclasses.dataclass(frozen=True)
class RefineModelConfig:
    """``preset`` default / tiny (``input_size`` is taken from the stage-1 network) or ``custom`` (``network``)."""

    preset: Literal["default", "tiny", "custom"] = "default"
    network: ResidualUpsampler3DConfig | None = None


@dataclasses.dataclass(frozen=True)
class Refine256StageConfig:
    stage: Literal["refine_256"] = "refine_256"
    experiment: str = "refine_256"
    source: str = ""  # the document (and section) these settings follow, e.g. a ../shared/seeds/ file
    stage1_checkpoint: str = "runs/stage1_64/default/checkpoints/best.pt"
    data: XRayDataConfig = XRayDataConfig(batch_size=2, eval_batch_size=1)
    model: RefineModelConfig = RefineModelConfig()
    loss: VolumeLossConfig = VolumeLossConfig(l1=1.0, edge=0.1, scale_weights=(0.25, 0.5, 1.0))
    optim: OptimConfig = OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01)
    scheduler: SchedulerConfig = SchedulerConfig(name="cosine", min_lr=1e-6)
    train: TrainConfig = TrainConfig(epochs=50, amp="bf16", grad_clip=1.0, early_stopping_patience=None, log_every=20)


def resolve_refine_network(model: RefineModelConfig, input_size: int,
                           gradient_checkpointing: bool) -> ResidualUpsampler3DConfig:
    if model.preset == "custom":
        if model.network is None:
            raise ConfigError("model.preset='custom' needs model.network (the ResidualUpsampler3DConfig fields)")
        network = model.network
        if network.input_size != input_size:
            raise ConfigError(f"model.network.input_size={network.input_size} but the stage-1 network outputs "
                              f"{input_size}^3; set model.network.input_size={input_size}")
    else:
        if model.network is not None:
            raise ConfigError("model.network is only used with model.preset='custom'")
        network = dataclasses.replace(REFINE_PRESETS[model.preset], input_size=input_size)
    return dataclasses.replace(network, gradient_checkpointing=gradient_checkpointing)


def freeze_finest_branch(model: ResidualUpsampler3D) -> None:
    """Targets at 2x the input: the 4x branch gets no gradient, so freeze it (DDP needs every trained
    parameter to receive one; the optimizer skips frozen parameters)."""
    for module in (model.up4, model.blocks4, model.heads[2]):
        module.requires_grad_(False)


def supervised(outputs: Mapping[int, torch.Tensor], high_size: int) -> dict[int, torch.Tensor]:
    """The outputs up to the target grid (all three when the target is 4x the input)."""
    return {size: out for size, out in outputs.items() if size <= high_size}


class Refine256Task:
    """Trainer task: frozen stage 1 (xray -> 64^3) -> ResidualUpsampler3D -> {64, 128, 256}^3, multi-scale loss."""

    def __init__(self, cfg: Refine256StageConfig, env: DistEnv, device: torch.device) -> None:
        from ctpipe.data.shards import sha256_file
        from ctpipe.schedules import build_optimizer

        self.cfg = cfg
        if not Path(cfg.stage1_checkpoint).is_file():
            raise FileNotFoundError(f"stage1_checkpoint={cfg.stage1_checkpoint} does not exist; train stage1_64 first "
                                    "and pass its run's checkpoints/best.pt")
        self.stage1, stage1_cfg = load_stage1(cfg.stage1_checkpoint, device)
        low = self.stage1.config.volume_size
        check_shard_set(cfg.data, self.stage1.config.xray_size)
        self.high_size = field_size(cfg.data.root, cfg.data.high_field)
        if self.high_size not in (2 * low, 4 * low):
            raise ConfigError(f"refine_256 refines {low}^3 to {4 * low}^3 (or {2 * low}^3) but data.high_field="
                              f"{cfg.data.high_field!r} holds {self.high_size}^3 volumes; prep the shard set with "
                              f"--volume-size {4 * low}")
        self.network = resolve_refine_network(cfg.model, low, cfg.train.gradient_checkpointing)
        self.train_set, self.val_set, self.test_set = load_xray_splits(cfg.data, [XRAY_FIELD, cfg.data.high_field])
        self.model = ResidualUpsampler3D(self.network)
        if self.high_size == 2 * low:
            freeze_finest_branch(self.model)
        self.loss = VolumeLoss(cfg.loss).to(device)
        self.modules = {"refine": self.model}
        n_supervised = 3 if self.high_size == 4 * low else 2  # the 4x branch is frozen for a 2x target
        self.ddp_find_unused_parameters = ddp_find_unused(cfg.loss.scale_weights, n_supervised)
        self.optimizers = {"refine": build_optimizer(self.model.parameters(), cfg.optim)}
        self.fingerprint = {"model": to_dict(cfg.model), "network": to_dict(self.network), "loss": to_dict(cfg.loss),
                            "optim": to_dict(cfg.optim), "stage1_sha256": sha256_file(cfg.stage1_checkpoint),
                            "output_size": self.high_size}

    @torch.no_grad()
    def stage1_volume(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The frozen stage-1 prediction, float32, clamped to [0, 1]."""
        return self.stage1(xray_input(batch)).float().clamp(0.0, 1.0)

    def train_step(self, batch: Mapping[str, Any], stepper: Any) -> dict[str, torch.Tensor]:
        with stepper.autocast():
            low = self.stage1_volume(batch)
            outputs = supervised(stepper.module("refine")(low), self.high_size)
            loss, terms = self.loss.multiscale(outputs, batch[self.cfg.data.high_field])
        stepper.backward(loss, "refine")
        return terms

    def example_images(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The first volume's target and prediction; TensorBoard shows their middle slices."""
        pred = self.model(self.stage1_volume(batch))[self.high_size]
        return {"target": batch[self.cfg.data.high_field][0], "prediction": pred[0].float()}

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pred = self.model(self.stage1_volume(batch))[self.high_size].float()
        target = batch[self.cfg.data.high_field]
        metrics = volume_metrics(pred, target, self.cfg.data.hu_window)
        return {"loss": self.loss.per_sample(pred, target),
                PSNR_COLUMN: metrics[PSNR_COLUMN], SSIM_COLUMN: metrics[SSIM_COLUMN], "mae": metrics["mae"]}


def final_evaluation(cfg: Refine256StageConfig, task: Refine256Task, run_dir: Path, device: torch.device,
                     env: DistEnv) -> None:
    """``stage1_64_trilinear`` and ``refine_256`` (best checkpoint) against the high-resolution targets."""
    if not env.is_main:
        return
    load_best(task, run_dir, device)
    task.stage1.to(device)

    def predict(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        low = task.stage1_volume(batch)
        return {TRILINEAR_MODEL: trilinear_baseline(low, task.high_size), REFINE_MODEL: task.model(low)[task.high_size]}

    targets = {TRILINEAR_MODEL: cfg.data.high_field, REFINE_MODEL: cfg.data.high_field}
    predict_all, all_targets = with_baselines(predict, targets, cfg.data, cfg.data.high_field, device)
    for split, dataset in evaluation_splits(task):
        evaluate_volume_models(predict_all, all_targets, dataset, run_dir / "eval" / split, device, cfg.data.hu_window,
                               batch_size=cfg.data.eval_batch_size)


REFINE_256 = Stage("refine_256", Refine256StageConfig, Refine256Task, final_evaluation, REFINE_MODEL)
