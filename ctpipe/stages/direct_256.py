"""Stage ``direct_256``: dual-view X-rays -> 256^3 CT end to end with :class:`XRay2CTProgressive`.

Gradient checkpointing (``train.gradient_checkpointing``: transformer blocks and every decoder stage) and
AMP (``train.amp``) keep the 256^3 activations in memory. The encoder and transformer can start from a
``stage1_64`` checkpoint (``init_from_stage1``; used only when the run starts, a resume restores its own
weights). Loss: multi-scale (the three finest outputs against the high-resolution target average-pooled
to each scale). Final evaluation rows: ``direct_256`` and the baselines ``mean_volume`` and ``nearest_xray`` on the
high-resolution grid.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ctpipe.checkpoint import RunCheckpoint, read_run_checkpoint
from ctpipe.config import ConfigError, OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.data.datasets import load_splits
from ctpipe.distributed import DistEnv, ddp_find_unused
from ctpipe.losses import VolumeLoss, VolumeLossConfig
from ctpipe.models.xray2ct import XRAY2CT_TINY
from ctpipe.models.xray2ct_progressive import XRay2CTProgressive, XRay2CTProgressiveConfig
from ctpipe.schedules import build_optimizer
from ctpipe.stages.base import Predictor, Stage
from ctpipe.stages.stage1_64 import STAGE1_64
from ctpipe.stages.xray2ct_common import (COSINE_SCHEDULE, HIGH_RES_LOSS, XRAY_FIELD, NetworkChoice, TrainedVolumeModel,
                                          VolumeTaskSteps, XRayDataConfig, check_shard_set, field_size,
                                          trained_volume_model, xray_input)
from ctpipe.stages.xray2ct_evaluation import with_baselines, xray_evaluation

STAGE = "direct_256"
DIRECT_MODEL = "direct_256"


@dataclasses.dataclass(frozen=True)
class Direct256StageConfig:
    stage: Literal["direct_256"] = "direct_256"
    experiment: str = "direct_256"
    source: str = ""  # the document (and section) these settings follow, e.g. a ../shared/seeds/ file
    init_from_stage1: str | None = None
    data: XRayDataConfig = XRayDataConfig(batch_size=1, eval_batch_size=1)
    # preset default: XRay2CTProgressiveConfig() (default backbone, 256^3); tiny: the tiny backbone with decoder
    # stages derived from the shard set's high-resolution size (tiny_direct_config)
    model: NetworkChoice[XRay2CTProgressiveConfig] = NetworkChoice()
    loss: VolumeLossConfig = HIGH_RES_LOSS
    optim: OptimConfig = OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05)
    scheduler: SchedulerConfig = COSINE_SCHEDULE
    train: TrainConfig = TrainConfig(epochs=100, amp="bf16", grad_clip=1.0, gradient_checkpointing=True,
                                     early_stopping_patience=None, log_every=20)


def tiny_direct_config(output_size: int) -> XRay2CTProgressiveConfig:
    """The tiny backbone with one small decoder stage per doubling from its token grid to ``output_size``."""
    stages = int(round(math.log2(output_size / XRAY2CT_TINY.token_grid)))
    if stages < 3 or XRAY2CT_TINY.token_grid * 2**stages != output_size:
        raise ConfigError(f"model.preset=tiny cannot reach {output_size}^3 from a {XRAY2CT_TINY.token_grid}^3 token grid "
                          "by >= 3 doublings; use a high-resolution field of 32^3 or more (power of two)")
    return XRay2CTProgressiveConfig(backbone=XRAY2CT_TINY, output_size=output_size,
                                    decoder_channels=(8,) * (stages - 1) + (4,))


def resolve_direct_network(model: NetworkChoice[XRay2CTProgressiveConfig], output_size: int,
                           gradient_checkpointing: bool) -> XRay2CTProgressiveConfig:
    presets = {"default": XRay2CTProgressiveConfig(), "tiny": None}
    network = model.resolve(presets, "XRay2CTProgressiveConfig")
    if network is None:  # the tiny preset's decoder depends on the target grid
        network = tiny_direct_config(output_size)
    if network.output_size != output_size:
        raise ConfigError(f"the direct_256 network outputs {network.output_size}^3 but data.high_field holds "
                          f"{output_size}^3 volumes; change data.high_field or the model")
    return dataclasses.replace(network, gradient_checkpointing=gradient_checkpointing)


def build_model(cfg: Direct256StageConfig, shape: Mapping[str, Any]) -> XRay2CTProgressive:
    """The configured network for ``shape["output_size"]`` (the shard set's high-resolution grid)."""
    return XRay2CTProgressive(resolve_direct_network(cfg.model, shape["output_size"], cfg.train.gradient_checkpointing))


def load_trained(checkpoint: str | Path | RunCheckpoint, device: torch.device | str = "cpu") -> TrainedVolumeModel:
    """The network of a ``direct_256`` checkpoint (X-rays ``(B, 2, n, n)`` -> its trained grid), frozen."""
    run = read_run_checkpoint(checkpoint)
    run.require_stage(STAGE)
    model = build_model(run.typed_config(Direct256StageConfig), run.inference)
    model.load_state_dict(run.models["model"])
    return trained_volume_model(model, run, int(run.inference["output_size"]), device)


class Direct256Task(VolumeTaskSteps):
    """Trainer task: ``xray`` -> XRay2CTProgressive -> {s/4, s/2, s}^3, multi-scale loss against ``data.high_field``."""

    def __init__(self, cfg: Direct256StageConfig, env: DistEnv, device: torch.device) -> None:
        self.cfg, self.target_field = cfg, cfg.data.high_field
        self.high_size = field_size(cfg.data.root, cfg.data.high_field)
        self.network = resolve_direct_network(cfg.model, self.high_size, cfg.train.gradient_checkpointing)
        check_shard_set(cfg.data, self.network.backbone.xray_size)
        self.train_set, self.val_set, self.test_set = load_splits(cfg.data, [XRAY_FIELD, cfg.data.high_field])
        self.model = build_model(cfg, {"output_size": self.high_size})
        if cfg.init_from_stage1:
            self.model.load_stage1_state_dict(STAGE1_64.load_trained(cfg.init_from_stage1).model.state_dict())
        self.loss = VolumeLoss(cfg.loss).to(device)
        self.modules = {"model": self.model}
        self.ddp_find_unused_parameters = ddp_find_unused(cfg.loss.scale_weights, len(self.model.heads))
        self.optimizers = {"model": build_optimizer(self.model.parameters(), cfg.optim)}
        self.fingerprint = {"model": to_dict(cfg.model), "network": to_dict(self.network), "loss": to_dict(cfg.loss),
                            "optim": to_dict(cfg.optim), "init_from_stage1": cfg.init_from_stage1,
                            "output_size": self.high_size}

    def predict(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.model(xray_input(batch))[self.high_size].float()


def model_targets(cfg: Direct256StageConfig, task: Direct256Task) -> dict[str, str]:
    return {DIRECT_MODEL: cfg.data.high_field}


def predictors(cfg: Direct256StageConfig, task: Direct256Task, device: torch.device) -> dict[str, Predictor]:
    """``direct_256`` and the trivial baselines on the high-resolution grid."""
    return with_baselines({DIRECT_MODEL: task.predict}, model_targets(cfg, task), cfg.data, cfg.data.high_field,
                          device)[0]


DIRECT_256: Stage[Direct256StageConfig, Direct256Task] = Stage(
    STAGE, Direct256StageConfig, Direct256Task, build_model, load_trained, predictors, DIRECT_MODEL,
    xray_evaluation(model_targets, lambda cfg: cfg.data.high_field))
