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

from ctpipe.config import OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.distributed import DistEnv, ddp_find_unused
from ctpipe.losses import VolumeLoss, VolumeLossConfig
from ctpipe.models.residual_upsampler3d import trilinear_baseline
from ctpipe.stages.base import Stage
from ctpipe.stages.xray2ct_common import (
    PSNR_COLUMN,
    SSIM_COLUMN,
    XRAY_FIELD,
    Stage1ModelConfig,
    Stage1Net,
    XRayDataConfig,
    check_shard_set,
    evaluate_volume_models,
    evaluation_splits,
    field_size,
    has_field,
    load_xray_splits,
    resolve_stage1_network,
    training_arrays,
    training_reference,
    volume_metrics,
    with_baselines,
    xray_input,
)
from ctpipe.models.lift_ct import LiftCT

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


class Stage1Task:
    """Trainer task: ``xray`` -> Stage1Net -> ``data.volume_field``, multi-scale composite loss."""

    def __init__(self, cfg: Stage1Config, env: DistEnv, device: torch.device) -> None:
        from ctpipe.schedules import build_optimizer

        self.cfg = cfg
        self.network = resolve_stage1_network(cfg.model, cfg.train.gradient_checkpointing)
        check_shard_set(cfg.data, self.network.xray_size)
        size = field_size(cfg.data.root, cfg.data.volume_field)
        if size != self.network.volume_size:
            raise ValueError(f"data.volume_field={cfg.data.volume_field!r} holds {size}^3 volumes but the network "
                             f"outputs {self.network.volume_size}^3; pick the matching field or model")
        self.high_field = cfg.data.high_field if has_field(cfg.data.root, cfg.data.high_field) else None
        fields = [XRAY_FIELD, cfg.data.volume_field] + ([self.high_field] if self.high_field else [])
        self.train_set, self.val_set, self.test_set = load_xray_splits(cfg.data, fields)
        self.model = Stage1Net(self.network, n_aux=len(cfg.loss.scale_weights) - 1)
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

    def train_step(self, batch: Mapping[str, Any], stepper: Any) -> dict[str, torch.Tensor]:
        with stepper.autocast():
            outputs = stepper.module("model")(xray_input(batch))
            loss, terms = self.loss.multiscale(outputs, batch[self.cfg.data.volume_field])
        stepper.backward(loss, "model")
        return terms

    def predict(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.model.net(xray_input(batch)).float()

    def example_images(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The first volume's target and prediction; TensorBoard shows their middle slices."""
        return {"target": batch[self.cfg.data.volume_field][0], "prediction": self.predict(batch)[0].float()}

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pred, target = self.predict(batch), batch[self.cfg.data.volume_field]
        metrics = volume_metrics(pred, target, self.cfg.data.hu_window)
        return {"loss": self.loss.per_sample(pred, target),
                PSNR_COLUMN: metrics[PSNR_COLUMN], SSIM_COLUMN: metrics[SSIM_COLUMN], "mae": metrics["mae"]}


def load_best(task: Any, run_dir: Path, device: torch.device) -> None:
    """Load ``checkpoints/best.pt`` (when it exists) into the task's modules."""
    from ctpipe.checkpoint import BEST, load_checkpoint

    best = run_dir / "checkpoints" / BEST
    if best.exists():
        state = load_checkpoint(best)
        for name, module in task.modules.items():
            module.load_state_dict(state["models"][name])
    for module in task.modules.values():
        module.to(device).eval()


def final_evaluation(cfg: Stage1Config, task: Stage1Task, run_dir: Path, device: torch.device, env: DistEnv) -> None:
    """``stage1_64`` at its own grid and ``stage1_64_trilinear`` on the high-resolution grid (if present)."""
    if not env.is_main:
        return
    load_best(task, run_dir, device)
    targets = {STAGE1_MODEL: cfg.data.volume_field}
    high_size = 0
    if task.high_field is not None:
        targets[TRILINEAR_MODEL] = task.high_field
        high_size = field_size(cfg.data.root, task.high_field)

    def predict(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        low = task.predict(batch).clamp(0.0, 1.0)
        outputs = {STAGE1_MODEL: low}
        if high_size:
            outputs[TRILINEAR_MODEL] = trilinear_baseline(low, high_size)
        return outputs

    predict_all, all_targets = with_baselines(predict, targets, cfg.data, cfg.data.volume_field, device)
    for split, dataset in evaluation_splits(task):
        evaluate_volume_models(predict_all, all_targets, dataset, run_dir / "eval" / split, device, cfg.data.hu_window,
                               batch_size=cfg.data.eval_batch_size)


STAGE1_64 = Stage("stage1_64", Stage1Config, Stage1Task, final_evaluation, STAGE1_MODEL)
