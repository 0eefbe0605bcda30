"""Stage ``stage1_64``: dual-view X-rays -> 64^3 CT with the hybrid ViT :class:`XRay2CT64`.

Loss: ``1.0 * L1 + 0.5 * (1 - SSIM3D)`` (true 3D SSIM, differentiable, :func:`ctpipe.losses.ssim3d`); the
"enhanced" config (``ctpipe/configs/stage1_64_enhanced.json``) adds the 3D Sobel edge term, multi-scale heads
and (with local VGG16 weights) a slice-wise perceptual term. AdamW, cosine schedule, bf16 autocast on GPU,
DDP through the trainer.

``model.architecture`` picks the network: ``vit`` (the hybrid ViT) or ``lift`` (the geometry-aware
:class:`ctpipe.models.lift_ct.LiftCT`, whose prior -- the training split's mean volume, or with ``prior="nearest"``
a bank of the training split -- is set before training and saved with its weights).

Final evaluation (validation and test splits, best checkpoint): ``stage1_64`` (the 64^3 prediction vs the
64^3 target) and, when the shard set has ``data.high_field``, ``stage1_64_trilinear`` (the prediction
trilinearly upsampled to the high grid vs the high-resolution target: the "option 1" baseline), beside the
baselines ``mean_volume`` (the training split's mean volume) and ``nearest_xray`` (the training volume whose
X-rays are nearest in L2) on every evaluated grid (``mean_volume_<size>`` on the high grid). Metrics are
those of :func:`ctpipe.stages.xray2ct_common.volume_metrics`, with X2CT-GAN's conventions in extra columns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ctpipe.checkpoint import RunCheckpoint, read_run_checkpoint
from ctpipe.config import OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.data.datasets import load_splits
from ctpipe.distributed import DistEnv, ddp_find_unused
from ctpipe.losses import VolumeLoss, VolumeLossConfig
from ctpipe.models.lift_ct import LiftCT
from ctpipe.models.residual_upsampler3d import trilinear_baseline
from ctpipe.models.stage1_net import Stage1Net
from ctpipe.schedules import build_optimizer
from ctpipe.stages.base import OncePerBatch, Predictor, Stage
from ctpipe.stages.xray2ct_common import (XRAY_FIELD, Stage1ModelConfig, TrainedVolumeModel, VolumeTaskSteps,
                                          XRayDataConfig, check_shard_set, field_size, has_field,
                                          resolve_stage1_network, trained_volume_model, xray_input)
from ctpipe.stages.xray2ct_evaluation import training_arrays, training_reference, with_baselines, xray_evaluation

STAGE = "stage1_64"
STAGE1_MODEL = "stage1_64"
TRILINEAR_MODEL = "stage1_64_trilinear"


STAGE1_SOURCE = (
    "seeds/003_64ed3ea31725ee4f.txt section 1 (base 64^3 hybrid ViT): L1 + SSIM (1.0 / 0.5), AdamW + "
    "CosineAnnealingLR, 100 epochs, batch 8 per GPU; its learning rate is 'default (from original config)': "
    "1e-4 as in seeds/002_54da4c0bd0afc75e.txt config_enhanced.json"
)


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    stage: Literal["stage1_64"] = "stage1_64"
    experiment: str = "stage1_64"
    source: str = STAGE1_SOURCE  # the document (and section) these settings follow
    data: XRayDataConfig = XRayDataConfig()
    model: Stage1ModelConfig = Stage1ModelConfig()
    loss: VolumeLossConfig = VolumeLossConfig(l1=1.0, ssim3d=0.5)
    optim: OptimConfig = OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05)
    scheduler: SchedulerConfig = SchedulerConfig(name="cosine", min_lr=1e-6)
    train: TrainConfig = TrainConfig(epochs=100, amp="bf16", grad_clip=1.0, early_stopping_patience=None)


def build_model(cfg: Stage1Config, shape: Mapping[str, Any]) -> Stage1Net:
    """The configured network with one auxiliary head per extra entry of ``loss.scale_weights``."""
    network = resolve_stage1_network(cfg.model, cfg.train.gradient_checkpointing)
    return Stage1Net(network, n_aux=len(cfg.loss.scale_weights) - 1)


def load_trained(checkpoint: str | Path | RunCheckpoint, device: torch.device | str = "cpu") -> TrainedVolumeModel:
    """The trained network of a ``stage1_64`` checkpoint (X-rays ``(B, 2, n, n)`` -> its grid), frozen."""
    run = read_run_checkpoint(checkpoint)
    run.require_stage(STAGE)
    model = build_model(run.typed_config(Stage1Config), run.inference)
    model.load_state_dict(run.models["model"])
    return trained_volume_model(model.net, run, model.net.config.volume_size, device)


class Stage1Task(VolumeTaskSteps):
    """Trainer task: ``xray`` -> Stage1Net -> ``data.volume_field``, multi-scale composite loss."""

    def __init__(self, cfg: Stage1Config, env: DistEnv, device: torch.device) -> None:
        self.cfg, self.target_field = cfg, cfg.data.volume_field
        self.network = resolve_stage1_network(cfg.model, cfg.train.gradient_checkpointing)
        check_shard_set(cfg.data, self.network.xray_size)
        size = field_size(cfg.data.root, cfg.data.volume_field)
        if size != self.network.volume_size:
            raise ValueError(f"data.volume_field={cfg.data.volume_field!r} holds {size}^3 volumes but the network "
                             f"outputs {self.network.volume_size}^3; pick the matching field or model")
        self.high_field = cfg.data.high_field if has_field(cfg.data.root, cfg.data.high_field) else None
        fields = [XRAY_FIELD, cfg.data.volume_field] + ([self.high_field] if self.high_field else [])
        self.train_set, self.val_set, self.test_set = load_splits(cfg.data, fields)
        self.model = build_model(cfg, {})
        if isinstance(self.model.net, LiftCT):  # its prior, from the training split (restored again on resume)
            if self.model.net.config.prior == "nearest":
                self.model.net.set_bank(*training_arrays(cfg.data, cfg.data.volume_field))
            else:
                self.model.net.set_prior(training_reference(cfg.data, [cfg.data.volume_field]).means[cfg.data.volume_field])
        self.loss = VolumeLoss(cfg.loss).to(device)
        self.modules = {"model": self.model}
        self.ddp_find_unused_parameters = ddp_find_unused(cfg.loss.scale_weights, len(cfg.loss.scale_weights))
        self.optimizers = {"model": build_optimizer(self.model.parameters(), cfg.optim)}
        self.fingerprint = {"model": to_dict(cfg.model), "network": to_dict(self.network), "loss": to_dict(cfg.loss),
                            "optim": to_dict(cfg.optim)}

    def predict(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.model.net(xray_input(batch)).float()


def model_targets(cfg: Stage1Config, task: Stage1Task) -> dict[str, str]:
    """The 64^3 prediction on its grid and, when the shard set has the high field, upsampled onto it."""
    return {STAGE1_MODEL: cfg.data.volume_field, **({TRILINEAR_MODEL: task.high_field} if task.high_field else {})}


def predictors(cfg: Stage1Config, task: Stage1Task, device: torch.device) -> dict[str, Predictor]:
    """``stage1_64``, ``stage1_64_trilinear`` (one forward pass per batch) and the trivial baselines."""
    targets = model_targets(cfg, task)
    low = OncePerBatch(lambda batch: task.predict(batch).clamp(0.0, 1.0))
    models: dict[str, Predictor] = {STAGE1_MODEL: low}
    if task.high_field:
        high_size = field_size(cfg.data.root, task.high_field)
        models[TRILINEAR_MODEL] = lambda batch: trilinear_baseline(low(batch), high_size)
    return with_baselines(models, targets, cfg.data, cfg.data.volume_field, device)[0]


STAGE1_64: Stage[Stage1Config, Stage1Task] = Stage(
    STAGE, Stage1Config, Stage1Task, build_model, load_trained, predictors, STAGE1_MODEL,
    xray_evaluation(model_targets, lambda cfg: cfg.data.volume_field))
