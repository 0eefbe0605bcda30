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
``refine_256`` and the baselines ``mean_volume`` and ``nearest_xray`` (:func:`~ctpipe.stages.xray2ct_evaluation.with_baselines`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ctpipe.checkpoint import RunCheckpoint, read_run_checkpoint
from ctpipe.config import ConfigError, OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.data.datasets import load_splits
from ctpipe.data.shards import sha256_file
from ctpipe.distributed import DistEnv, ddp_find_unused
from ctpipe.losses import VolumeLoss, VolumeLossConfig
from ctpipe.models.residual_upsampler3d import (RESIDUAL_UPSAMPLER3D_TINY, ResidualUpsampler3D, ResidualUpsampler3DConfig,
                                                trilinear_baseline)
from ctpipe.schedules import build_optimizer
from ctpipe.stages.base import OncePerBatch, Predictor, Stage
from ctpipe.stages.stage1_64 import STAGE1_64, TRILINEAR_MODEL
from ctpipe.stages.xray2ct_common import (COSINE_SCHEDULE, HIGH_RES_LOSS, XRAY_FIELD, NetworkChoice, TrainedVolumeModel,
                                          VolumeTaskSteps, XRayDataConfig, check_shard_set, field_size,
                                          trained_volume_model, xray_input)
from ctpipe.stages.xray2ct_evaluation import with_baselines, xray_evaluation

STAGE = "refine_256"
REFINE_MODEL = "refine_256"
REFINE_PRESETS: dict[str, ResidualUpsampler3DConfig] = {"default": ResidualUpsampler3DConfig(),
                                                        "tiny": RESIDUAL_UPSAMPLER3D_TINY}


@dataclasses.dataclass(frozen=True)
class Refine256StageConfig:
    stage: Literal["refine_256"] = "refine_256"
    experiment: str = "refine_256"
    source: str = ""  # the document (and section) these settings follow, e.g. a ../shared/seeds/ file
    stage1_checkpoint: str = "runs/stage1_64/default/checkpoints/best.pt"
    data: XRayDataConfig = XRayDataConfig(batch_size=2, eval_batch_size=1)
    # a preset's input_size is taken from the stage-1 network; custom must match it
    model: NetworkChoice[ResidualUpsampler3DConfig] = NetworkChoice()
    loss: VolumeLossConfig = HIGH_RES_LOSS
    optim: OptimConfig = OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01)
    scheduler: SchedulerConfig = COSINE_SCHEDULE
    train: TrainConfig = TrainConfig(epochs=50, amp="bf16", grad_clip=1.0, early_stopping_patience=None, log_every=20)


def resolve_refine_network(model: NetworkChoice[ResidualUpsampler3DConfig], input_size: int,
                           gradient_checkpointing: bool) -> ResidualUpsampler3DConfig:
    network = model.resolve(REFINE_PRESETS, "ResidualUpsampler3DConfig")
    if model.preset != "custom":  # a preset refines whatever grid the stage-1 network outputs
        network = dataclasses.replace(network, input_size=input_size)
    elif network.input_size != input_size:
        raise ConfigError(f"model.network.input_size={network.input_size} but the stage-1 network outputs "
                          f"{input_size}^3; set model.network.input_size={input_size}")
    return dataclasses.replace(network, gradient_checkpointing=gradient_checkpointing)


def freeze_finest_branch(model: ResidualUpsampler3D) -> None:
    """Targets at 2x the input: the 4x branch gets no gradient, so freeze it (DDP needs every trained
    parameter to receive one; the optimizer skips frozen parameters)."""
    for module in (model.up4, model.blocks4, model.heads[2]):
        module.requires_grad_(False)


def supervised(outputs: Mapping[int, torch.Tensor], high_size: int) -> dict[int, torch.Tensor]:
    """The outputs up to the target grid (all three when the target is 4x the input)."""
    return {size: out for size, out in outputs.items() if size <= high_size}


def build_model(cfg: Refine256StageConfig, shape: Mapping[str, Any]) -> ResidualUpsampler3D:
    """ResidualUpsampler3D from ``shape["input_size"]`` (the stage-1 grid) to ``shape["output_size"]`` (4x, or 2x with the
    finest branch frozen)."""
    model = ResidualUpsampler3D(resolve_refine_network(cfg.model, shape["input_size"], cfg.train.gradient_checkpointing))
    if shape["output_size"] == 2 * shape["input_size"]:
        freeze_finest_branch(model)
    return model


def load_trained(checkpoint: str | Path | RunCheckpoint, device: torch.device | str = "cpu") -> TrainedVolumeModel:
    """The refiner of a ``refine_256`` checkpoint: stage-1 volume ``(B, 1, s, s, s)`` -> the trained grid."""
    run = read_run_checkpoint(checkpoint)
    run.require_stage(STAGE)
    shape = {"input_size": int(run.fingerprint["network"]["input_size"]), **run.inference}
    model = build_model(run.typed_config(Refine256StageConfig), shape)
    model.load_state_dict(run.models[Refine256Task.module_name])
    return trained_volume_model(model, run, int(shape["output_size"]), device)


class Refine256Task(VolumeTaskSteps):
    """Trainer task: frozen stage 1 (xray -> 64^3) -> ResidualUpsampler3D -> {64, 128, 256}^3, multi-scale loss."""

    module_name = "refine"

    def __init__(self, cfg: Refine256StageConfig, env: DistEnv, device: torch.device) -> None:
        self.cfg, self.target_field = cfg, cfg.data.high_field
        if not Path(cfg.stage1_checkpoint).is_file():
            raise FileNotFoundError(f"stage1_checkpoint={cfg.stage1_checkpoint} does not exist; train stage1_64 first "
                                    "and pass its run's checkpoints/best.pt")
        self.stage1 = STAGE1_64.load_trained(cfg.stage1_checkpoint, device).model  # frozen, eval mode
        low = self.stage1.config.volume_size
        check_shard_set(cfg.data, self.stage1.config.xray_size)
        self.high_size = field_size(cfg.data.root, cfg.data.high_field)
        if self.high_size not in (2 * low, 4 * low):
            raise ConfigError(f"refine_256 refines {low}^3 to {4 * low}^3 (or {2 * low}^3) but data.high_field="
                              f"{cfg.data.high_field!r} holds {self.high_size}^3 volumes; prep the shard set with "
                              f"--volume-size {4 * low}")
        self.network = resolve_refine_network(cfg.model, low, cfg.train.gradient_checkpointing)
        self.train_set, self.val_set, self.test_set = load_splits(cfg.data, [XRAY_FIELD, cfg.data.high_field])
        self.model = build_model(cfg, {"input_size": low, "output_size": self.high_size})
        self.loss = VolumeLoss(cfg.loss).to(device)
        self.modules = {self.module_name: self.model}
        n_supervised = 3 if self.high_size == 4 * low else 2  # the 4x branch is frozen for a 2x target
        self.ddp_find_unused_parameters = ddp_find_unused(cfg.loss.scale_weights, n_supervised)
        self.optimizers = {self.module_name: build_optimizer(self.model.parameters(), cfg.optim)}
        self.fingerprint = {"model": to_dict(cfg.model), "network": to_dict(self.network), "loss": to_dict(cfg.loss),
                            "optim": to_dict(cfg.optim), "stage1_sha256": sha256_file(cfg.stage1_checkpoint),
                            "output_size": self.high_size}

    @torch.no_grad()
    def stage1_volume(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The frozen stage-1 prediction, float32, clamped to [0, 1]."""
        return self.stage1(xray_input(batch)).float().clamp(0.0, 1.0)

    def net_input(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.stage1_volume(batch)

    def supervised(self, outputs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return supervised(outputs, self.high_size)

    def predict(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.model(self.stage1_volume(batch))[self.high_size].float()


def model_targets(cfg: Refine256StageConfig, task: Refine256Task) -> dict[str, str]:
    return {TRILINEAR_MODEL: cfg.data.high_field, REFINE_MODEL: cfg.data.high_field}


def predictors(cfg: Refine256StageConfig, task: Refine256Task, device: torch.device) -> dict[str, Predictor]:
    """``stage1_64_trilinear`` and ``refine_256`` from one stage-1 forward pass per batch, and the baselines."""
    low = OncePerBatch(task.stage1_volume)
    models: dict[str, Predictor] = {TRILINEAR_MODEL: lambda b: trilinear_baseline(low(b), task.high_size),
                                    REFINE_MODEL: lambda b: task.model(low(b))[task.high_size]}
    return with_baselines(models, model_targets(cfg, task), cfg.data, cfg.data.high_field, device)[0]


REFINE_256: Stage[Refine256StageConfig, Refine256Task] = Stage(
    STAGE, Refine256StageConfig, Refine256Task, build_model, load_trained, predictors, REFINE_MODEL,
    xray_evaluation(model_targets, lambda cfg: cfg.data.high_field))
