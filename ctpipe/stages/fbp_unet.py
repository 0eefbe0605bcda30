"""Experiment 4 (stage ``fbp_unet``): a FROZEN FBP followed by a trained 2D UNet, composite loss.

The FBP (ramp filter x window, then backprojection) is either the published LoDoPaB baseline (Hann window,
frequency scaling 0.641) or the window learned in experiment 1 (``model.window_checkpoint`` = that run's
``checkpoints/best.pt``). It is never trained: its parameters have ``requires_grad=False``, are not in the
optimizer, and its forward runs under ``torch.no_grad()`` (the sinogram -> FBP image map is deterministic, so
building a backprojection autograd graph would only cost time and memory). Only the UNet is optimised, with
:class:`ctpipe.losses.CompositeLoss`; every loss term is logged separately (``train_<term>`` and
``val_<term>`` columns of ``history.csv``).

The checkpoint holds two modules: ``fbp`` (the frozen window, so a run folder alone reproduces its model)
and ``unet``. Per-segment history: ``history.csv`` is cumulative with an ``epoch`` column, so segment ``k``
of ``S`` epochs is simply rows ``(k-1)*S+1 .. k*S`` (``events.jsonl`` records every resume); one file keeps
the whole learning curve plottable at once, which per-segment copies would not add to.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ctpipe.checkpoint import RunCheckpoint, read_run_checkpoint
from ctpipe.config import DataConfig, OptimConfig, SchedulerConfig, TrainConfig, from_dict, to_dict
from ctpipe.data.datasets import load_splits
from ctpipe.distributed import DistEnv
from ctpipe.losses import CompositeLoss, LossWeights
from ctpipe.models.learnable_fbp import LearnableFBP
from ctpipe.models.postprocessing_unet import PostProcessingUNet, PostProcessingUNetConfig
from ctpipe.schedules import build_optimizer
from ctpipe.stages.base import OncePerBatch, Predictor, Stage, freeze
from ctpipe.stages.fbp_window import LEARNED_MODEL, WindowModelConfig, build_window
from ctpipe.stages.lodopab_common import (HANN_MODEL, LODOPAB_EVALUATION, LODOPAB_FIELDS, hann_predictor,
                                          lodopab_metrics, shard_geometry)
from ctpipe.task import Stepper

STAGE = "fbp_unet"
UNET_MODEL = "fbp_unet"  # experiment 4's trained model in the eval tables
UNET_PRESETS: dict[str, PostProcessingUNetConfig] = {
    "default": PostProcessingUNetConfig(),  # dival's LoDoPaB FBP+UNet: 5 scales (32, 32, 64, 64, 128), 4 skip channels
    "tiny": PostProcessingUNetConfig.tiny(),  # 3 scales (8, 8, 16), 2 skip channels: tests and smoke runs
}


@dataclasses.dataclass(frozen=True)
class FBPUNetModelConfig:
    """The frozen FBP's window and the UNet.

    ``window_checkpoint``: None = fixed Hann window (scaling 0.641), else the path of an experiment-1
    (``fbp_window``) checkpoint whose learned window is used. ``size`` picks a UNet preset; ``channels`` /
    ``skip_channels`` (when not None) override the preset's.
    """

    window_checkpoint: str | None = None
    padding: bool = True
    size: Literal["default", "tiny"] = "default"
    channels: tuple[int, ...] | None = None
    skip_channels: int | None = None
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    residual: bool = True
    zero_init_output: bool = True  # with residual: the network starts as the identity, i.e. at the FBP image


@dataclasses.dataclass(frozen=True)
class FBPUNetConfig:
    stage: Literal["fbp_unet"] = "fbp_unet"
    experiment: str = "exp4_fbp_unet"
    data: DataConfig = DataConfig(batch_size=4, num_workers=4)  # seeds/000_462d61dc861309f7.txt: batch 4
    model: FBPUNetModelConfig = FBPUNetModelConfig()
    loss: LossWeights = LossWeights(l1=1.0, ms_ssim=0.5, edge=0.1)
    optim: OptimConfig = OptimConfig(lr=1e-3)
    scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainConfig = TrainConfig(epochs=25, segment_epochs=5, early_stopping_patience=6, log_every=100)


# ---- building blocks -------------------------------------------------------------------------------------
def build_unet_config(cfg: FBPUNetModelConfig) -> PostProcessingUNetConfig:
    """The preset ``cfg.size`` with the explicitly given fields replaced."""
    preset = UNET_PRESETS[cfg.size]
    return dataclasses.replace(
        preset,
        channels=cfg.channels if cfg.channels is not None else preset.channels,
        skip_channels=cfg.skip_channels if cfg.skip_channels is not None else preset.skip_channels,
        norm=cfg.norm, residual=cfg.residual, zero_init_output=cfg.zero_init_output,
    )


def load_window_checkpoint(path: str | Path, padding: bool | None = None) -> nn.Module:
    """The window module of an experiment-1 (``fbp_window``) checkpoint, with its trained values.

    ``padding``: this run's filter padding; it must match the one the window was learned with.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.window_checkpoint={path} does not exist; train experiment 1 first "
                                "(ctpipe train fbp_window --run-dir runs/fbp_window/<name>) and pass its "
                                "checkpoints/best.pt, or leave model.window_checkpoint empty for Hann 0.641")
    run = read_run_checkpoint(path)
    if "model" not in run.models or run.stage != "fbp_window":
        raise ValueError(f"model.window_checkpoint={path} is not an experiment-1 (fbp_window) checkpoint (its stage "
                         f"is {run.stage!r}); pass runs/fbp_window/<name>/checkpoints/best.pt")
    window_cfg = from_dict(WindowModelConfig, run.config.get("model", {}), where=f"{path} config.model")
    if padding is not None and window_cfg.padding != padding:
        raise ValueError(f"{path} learned its window with padding={window_cfg.padding}; set "
                         f"model.padding={str(window_cfg.padding).lower()} to use it")
    window = build_window(window_cfg)
    prefix = "window."
    window.load_state_dict({k[len(prefix):]: v for k, v in run.models["model"].items() if k.startswith(prefix)})
    return window


def build_model(cfg: FBPUNetConfig, shape: Mapping[str, Any]) -> dict[str, nn.Module]:
    """``{"fbp": frozen FBP, "unet": UNet}`` for ``shape["geometry"]``; the window is Hann 0.641 or the one
    learned in ``model.window_checkpoint``."""
    fbp = (LearnableFBP(shape["geometry"], load_window_checkpoint(cfg.model.window_checkpoint, cfg.model.padding),
                        padding=cfg.model.padding)
           if cfg.model.window_checkpoint else LearnableFBP.hann_baseline(shape["geometry"], cfg.model.padding))
    fbp.freeze_fbp()
    return {"fbp": fbp, "unet": PostProcessingUNet(build_unet_config(cfg.model))}


def load_trained(checkpoint: str | Path | RunCheckpoint, device: torch.device | str = "cpu") -> nn.Sequential:
    """FBP followed by the UNet of an ``fbp_unet`` checkpoint (geometry from its run's shard set), eval mode."""
    run = read_run_checkpoint(checkpoint)
    run.require_stage(STAGE)
    modules = build_model(run.typed_config(FBPUNetConfig), {"geometry": shard_geometry(run.config["data"]["root"])})
    for name, module in modules.items():
        module.load_state_dict(run.models[name])
    return freeze(nn.Sequential(modules["fbp"], modules["unet"]), device)  # type: ignore[return-value]


def _check_loss_fits(loss: CompositeLoss, n_pixels: int) -> None:
    """Fail at build time (not at the first step) when MS-SSIM cannot run on these images."""
    if loss.weights.ms_ssim > 0:
        loss.ssim_term_name((n_pixels, n_pixels))


def _loss_columns(terms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validation names of the unweighted loss terms: ``loss_<term>`` (``val_loss_ssim`` is 1 - SSIM, distinct
    from the metric column ``val_ssim[range=1]``)."""
    return {f"loss_{k}": v for k, v in terms.items() if k != "total"}


def _float32_region(device: torch.device) -> Any:
    """No autocast: the FBP and the loss are computed in float32 even in an AMP run."""
    return torch.autocast(device_type=device.type, enabled=False)


# ---- the trainer's task ------------------------------------------------------------------------------------
class FBPUNetTask:
    """Trainer task: sinogram -> frozen FBP (no grad) -> UNet -> image; composite loss on the UNet output."""

    def __init__(self, cfg: FBPUNetConfig, env: DistEnv, device: torch.device) -> None:
        self.cfg = cfg
        # The loss first: missing VGG weights (perceptual > 0) fail here, before any data is read.
        self.loss_fn = CompositeLoss(cfg.loss).to(device)
        self.geometry = shard_geometry(cfg.data.root)
        _check_loss_fits(self.loss_fn, self.geometry.n_pixels)
        self.train_set, self.val_set, self.test_set = load_splits(cfg.data, LODOPAB_FIELDS)
        self.modules = build_model(cfg, {"geometry": self.geometry})
        self.fbp, self.unet = self.modules["fbp"], self.modules["unet"]
        self.optimizers = {"unet": build_optimizer(self.unet.parameters(), cfg.optim)}
        self.fingerprint = {"model": to_dict(cfg.model), "loss": to_dict(cfg.loss), "optim": to_dict(cfg.optim),
                            "geometry": repr(self.geometry)}

    @torch.no_grad()
    def fbp_image(self, sinogram: torch.Tensor) -> torch.Tensor:
        """The frozen FBP reconstruction (float32, no autograd graph)."""
        with _float32_region(sinogram.device):
            return self.fbp(sinogram.float())

    def predict(self, sinogram: torch.Tensor) -> torch.Tensor:
        """FBP + UNet with the raw (unwrapped) modules, e.g. for evaluation and inference."""
        return self.unet(self.fbp_image(sinogram)).float()

    def train_step(self, batch: Mapping[str, Any], stepper: Stepper) -> dict[str, torch.Tensor]:
        image = self.fbp_image(batch["sinogram"])
        with stepper.autocast():
            pred = stepper.module("unet")(image)
        with _float32_region(pred.device):
            loss, terms = self.loss_fn(pred.float(), batch["image"])
        stepper.backward(loss, "unet")
        return {"loss": loss.detach(), **{k: v for k, v in terms.items() if k != "total"}}

    def example_images(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The first sample's target and reconstruction (TensorBoard's validation images)."""
        return {"target": batch["image"][0], "prediction": self.predict(batch["sinogram"])[0].float()}

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pred = self.predict(batch["sinogram"])
        target = batch["image"]
        per_sample: dict[str, list[torch.Tensor]] = {}
        with _float32_region(pred.device):
            for i in range(pred.shape[0]):  # the composite loss is a batch mean: score each sample alone
                total, terms = self.loss_fn(pred[i : i + 1], target[i : i + 1])
                for name, value in {"loss": total.detach(), **_loss_columns(terms)}.items():
                    per_sample.setdefault(name, []).append(value)
        return {**{k: torch.stack(v) for k, v in per_sample.items()}, **lodopab_metrics(pred, target)}


# ---- final evaluation -------------------------------------------------------------------------------------------
def predictors(cfg: FBPUNetConfig, task: FBPUNetTask, device: torch.device) -> dict[str, Predictor]:
    """FBP-Hann, the learned window (when given) and FBP+UNet; the predictors of a batch share its FBP image."""
    fbp_image = OncePerBatch(lambda b: task.fbp_image(b["sinogram"]))
    out: dict[str, Predictor] = {}
    if cfg.model.window_checkpoint:
        out[HANN_MODEL] = hann_predictor(task.geometry, cfg.model.padding, device)
        out[LEARNED_MODEL] = fbp_image
    else:
        out[HANN_MODEL] = fbp_image  # the frozen FBP is exactly the Hann-0.641 baseline
    out[UNET_MODEL] = lambda b: task.unet(fbp_image(b)).float()
    return out


FBP_UNET: Stage[FBPUNetConfig, FBPUNetTask] = Stage(
    STAGE, FBPUNetConfig, FBPUNetTask, build_model, load_trained, predictors, UNET_MODEL, LODOPAB_EVALUATION)
