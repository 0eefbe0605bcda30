"""Experiment 1 (stage ``fbp_window``): learn only the FBP window (WindowII) with an MSE loss."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ctpipe.checkpoint import RunCheckpoint, read_run_checkpoint
from ctpipe.config import DataConfig, OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.data.datasets import load_splits
from ctpipe.distributed import DistEnv
from ctpipe.models.learnable_fbp import LearnableFBP
from ctpipe.ops.filters import LODOPAB_HANN_SCALING, FixedWindow, WindowII
from ctpipe.schedules import build_optimizer
from ctpipe.stages.base import Predictor, Stage, freeze
from ctpipe.stages.lodopab_common import (HANN_MODEL, LODOPAB_EVALUATION, LODOPAB_FIELDS, hann_predictor,
                                          lodopab_metrics, shard_geometry)
from ctpipe.task import Stepper

LEARNED_MODEL = "learned_window"  # experiment 1's trained model in the eval tables
STAGE = "fbp_window"


@dataclasses.dataclass(frozen=True)
class WindowModelConfig:
    window: Literal["learnable", "fixed"] = "learnable"
    fixed_window: str = "hann"          # when window = "fixed"
    frequency_scaling: float = LODOPAB_HANN_SCALING  # initial (learnable) or fixed scaling
    n_terms: int = 8                    # cosine-series terms of WindowII
    padding: bool = True


@dataclasses.dataclass(frozen=True)
class FBPWindowConfig:
    stage: Literal["fbp_window"] = "fbp_window"
    experiment: str = "exp1_learned_window"
    data: DataConfig = DataConfig(batch_size=4)  # seeds/001_e8fd05045c3b6731.txt: batch 4, 30 epochs, patience 4
    model: WindowModelConfig = WindowModelConfig()
    optim: OptimConfig = OptimConfig(lr=1e-2)
    scheduler: SchedulerConfig = SchedulerConfig(patience=1)
    train: TrainConfig = TrainConfig(epochs=30, early_stopping_patience=4)


def build_window(cfg: WindowModelConfig) -> nn.Module:
    if cfg.window == "learnable":
        return WindowII(n_terms=cfg.n_terms, frequency_scaling=cfg.frequency_scaling)
    return FixedWindow(cfg.fixed_window, cfg.frequency_scaling)


def build_model(cfg: FBPWindowConfig, shape: Mapping[str, Any]) -> LearnableFBP:
    """The FBP with the configured window for ``shape["geometry"]`` (the shard set's ParallelBeamGeometry)."""
    return LearnableFBP(shape["geometry"], build_window(cfg.model), padding=cfg.model.padding)


def load_trained(checkpoint: str | Path | RunCheckpoint, device: torch.device | str = "cpu") -> LearnableFBP:
    """The learned FBP of an ``fbp_window`` checkpoint (geometry from its run's shard set), eval mode."""
    run = read_run_checkpoint(checkpoint)
    run.require_stage(STAGE)
    cfg = run.typed_config(FBPWindowConfig)
    model = build_model(cfg, {"geometry": shard_geometry(cfg.data.root)})
    model.load_state_dict(run.models["model"])
    return freeze(model, device)  # type: ignore[return-value]


class FBPWindowTask:
    """Trainer task: sinogram -> LearnableFBP -> image, MSE against the ground truth."""

    def __init__(self, cfg: FBPWindowConfig, env: DistEnv, device: torch.device) -> None:
        self.cfg = cfg
        self.geometry = shard_geometry(cfg.data.root)
        self.train_set, self.val_set, self.test_set = load_splits(cfg.data, LODOPAB_FIELDS)
        self.model = build_model(cfg, {"geometry": self.geometry})
        self.modules = {"model": self.model}
        self.optimizers = {"model": build_optimizer(self.model.parameters(), cfg.optim)}
        self.fingerprint = {"model": to_dict(cfg.model), "optim": to_dict(cfg.optim), "geometry": repr(self.geometry)}

    def train_step(self, batch: Mapping[str, Any], stepper: Stepper) -> dict[str, torch.Tensor]:
        with stepper.autocast():
            pred = stepper.module("model")(batch["sinogram"])
            loss = torch.nn.functional.mse_loss(pred.float(), batch["image"])
        stepper.backward(loss, "model")
        return {"loss": loss.detach()}

    def example_images(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The first sample's target and reconstruction (TensorBoard's validation images)."""
        return {"target": batch["image"][0], "prediction": self.model(batch["sinogram"])[0].float()}

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pred = self.model(batch["sinogram"]).float()
        target = batch["image"]
        per_sample_mse = ((pred - target) ** 2).flatten(1).mean(1)
        return {"loss": per_sample_mse, **lodopab_metrics(pred, target)}


def predictors(cfg: FBPWindowConfig, task: FBPWindowTask, device: torch.device) -> dict[str, Predictor]:
    """The FBP-Hann-0.641 baseline and the learned window."""
    return {HANN_MODEL: hann_predictor(task.geometry, cfg.model.padding, device),
            LEARNED_MODEL: lambda b: task.model(b["sinogram"])}


FBP_WINDOW: Stage[FBPWindowConfig, FBPWindowTask] = Stage(
    STAGE, FBPWindowConfig, FBPWindowTask, build_model, load_trained, predictors, LEARNED_MODEL, LODOPAB_EVALUATION)
