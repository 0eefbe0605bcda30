"""Experiment 1 (stage ``fbp_window``): learn only the FBP window (WindowII) with an MSE loss."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ctpipe.config import DataConfig, OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.distributed import DistEnv
from ctpipe.models.learnable_fbp import LearnableFBP
from ctpipe.ops.filters import LODOPAB_HANN_SCALING
from ctpipe.stages.base import Stage, evaluate_predictors
from ctpipe.stages.lodopab_common import load_lodopab_splits, lodopab_metrics, shard_geometry

LEARNED_MODEL = "learned_window"  # experiment 1's trained model in the eval tables


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
    data: DataConfig = DataConfig()
    model: WindowModelConfig = WindowModelConfig()
    optim: OptimConfig = OptimConfig(lr=1e-2)
    scheduler: SchedulerConfig = SchedulerConfig(patience=1)
    train: TrainConfig = TrainConfig()


def build_window(cfg: WindowModelConfig) -> nn.Module:
    from ctpipe.ops.filters import FixedWindow, WindowII

    if cfg.window == "learnable":
        return WindowII(n_terms=cfg.n_terms, frequency_scaling=cfg.frequency_scaling)
    return FixedWindow(cfg.fixed_window, cfg.frequency_scaling)


class FBPWindowTask:
    """Trainer task: sinogram -> LearnableFBP -> image, MSE against the ground truth."""

    def __init__(self, cfg: FBPWindowConfig, env: DistEnv, device: torch.device) -> None:
        from ctpipe.schedules import build_optimizer

        self.cfg = cfg
        self.geometry = shard_geometry(cfg.data.root)
        self.train_set, self.val_set, self.test_set = load_lodopab_splits(cfg.data)
        self.model = LearnableFBP(self.geometry, build_window(cfg.model), padding=cfg.model.padding)
        self.modules = {"model": self.model}
        self.optimizers = {"model": build_optimizer(self.model.parameters(), cfg.optim)}
        self.fingerprint = {"model": to_dict(cfg.model), "optim": to_dict(cfg.optim), "geometry": repr(self.geometry)}

    def train_step(self, batch: Mapping[str, Any], stepper: Any) -> dict[str, torch.Tensor]:
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


def final_evaluation(cfg: FBPWindowConfig, task: FBPWindowTask, run_dir: Path, device: torch.device,
                     env: DistEnv) -> None:
    """Score the FBP-Hann-0.641 baseline and the learned window (best checkpoint) on validation and test."""
    if not env.is_main:
        return
    from ctpipe.checkpoint import BEST, load_checkpoint

    best = run_dir / "checkpoints" / BEST
    if best.exists():
        task.model.load_state_dict(load_checkpoint(best)["models"]["model"])
    baseline = LearnableFBP.hann_baseline(task.geometry, cfg.model.padding).to(device).eval()
    learned = task.model.to(device).eval()
    predictors = {"fbp_hann": lambda b: baseline(b["sinogram"]), LEARNED_MODEL: lambda b: learned(b["sinogram"])}
    for split, dataset in (("validation", task.val_set), ("test", task.test_set)):
        if dataset is None or len(dataset) == 0:
            continue
        evaluate_predictors(predictors, dataset, "image", lodopab_metrics, run_dir / "eval" / split, device,
                            batch_size=cfg.data.eval_batch_size)


FBP_WINDOW = Stage("fbp_window", FBPWindowConfig, FBPWindowTask, final_evaluation, LEARNED_MODEL)
