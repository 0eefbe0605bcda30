"""Stage ``pix2pix_phase``: a pix2pix GAN (U-Net G + PatchGAN D) maps a time-averaged CT slice to phase 0.

Data: a ``nifti_pairs`` shard set (``ctpipe prep nifti-pairs``): fields ``input`` (time-averaged) and
``target`` (phase 0), axial slices in [-1, 1] (the HU window of the prep mapped linearly).

Training (the reference's order, one optimizer per network): ``fake = G(a)``; D step on
``0.5 * (GAN(D(a, b), real) + GAN(D(a, fake.detach()), fake))``; then G step on
``GAN(D'(a, fake), real) + lambda_l1 * |fake - b|_1`` against the UPDATED D, where D' is a detached
parameter snapshot (:func:`ctpipe.losses.gan.generator_loss`), so the G loss sends no gradient to D.
The D step runs through ``stepper.module("D")`` (the DDP wrapper: its gradients are all-reduced); the G
step's D pass uses the raw ``task.D`` -- exactly what ``generator_loss`` unwraps a DDP wrapper to -- because
it needs no gradient sync and a ``torch.compile`` wrapper has no ``.module`` to unwrap. Learning rates
follow the pix2pix rule: constant for ``scheduler.n_epochs_constant`` epochs (the reference's
``n_epochs``), then linear decay until ``train.epochs`` (= ``n_epochs + n_epochs_decay``). Both optimizers
and schedulers are checkpointed by the trainer (exact resume; no ``--epoch_count``).

Validation (per slice): ``loss`` = mean |G(a) - b| on the [-1, 1] scale, PSNR / SSIM with the data range
(-1, 1) named in the column (``psnr[range=-1..1]``).

Final evaluation (per VOLUME): every validation/test volume is rebuilt from its shard slices (the manifest
records each volume's provenance), mapped back to HU and scored with
:func:`ctpipe.volume_scores.evaluate_volume` for the model (``pix2pix``) and the ``identity`` baseline (the
input used as the prediction): ``eval/<split>/{pix2pix,identity}.csv``, one row per volume, on the prep's
slice grid (the resized grid when the prep resized slices).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from ctpipe.checkpoint import RunCheckpoint, read_run_checkpoint
from ctpipe.config import ConfigError, DataConfig, OptimConfig, SchedulerConfig, TrainConfig, to_dict
from ctpipe.data.datasets import load_splits
from ctpipe.distributed import DistEnv
from ctpipe.metrics import metric_column, psnr, ssim
from ctpipe.losses.gan import discriminator_loss, generator_loss
from ctpipe.models.patchgan import PatchGANConfig, PatchGANDiscriminator
from ctpipe.models.pix2pix import GENERATORS, UNetGeneratorConfig, UNetGenerator
from ctpipe.schedule_checks import linear_decay_problem
from ctpipe.schedules import build_optimizer
from ctpipe.stages.base import Evaluation, Predictor, Stage, freeze
from ctpipe.stages.phases_common import (MODEL_NAME, SLICE_RANGE, PrepInfo, phase_predictors, read_prep_info,
                                         score_volumes, slice_side)
from ctpipe.task import Stepper

STAGE = "pix2pix_phase"
log = logging.getLogger(__name__)


# ---- configuration ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PhaseDataConfig(DataConfig):
    root: str = "data/phases/shards"
    batch_size: int = 4
    eval_batch_size: int = 8
    num_workers: int = 4
    input_field: str = "input"
    target_field: str = "target"


@dataclasses.dataclass(frozen=True)
class Pix2PixModelConfig:
    generator: Literal["unet_256", "unet_512"] = "unet_256"
    num_downs: int | None = None         # None: the deepest the slice size allows, capped at the generator's
    ngf: int = 64
    norm: Literal["batch", "instance"] = "batch"
    dropout: bool = True
    ndf: int = 64                        # PatchGAN width
    n_layers_d: int = 3                  # 3 = the 70x70 PatchGAN
    norm_d: Literal["batch", "instance"] | None = None  # None = same as ``norm`` (the reference)


@dataclasses.dataclass(frozen=True)
class Pix2PixLossConfig:
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    lambda_l1: float = 100.0


# the source experiment (seeds/004): unet_512, instance norm, lambda_L1 50, Adam lr 1e-4 (betas 0.5, 0.999),
# batch 4, 100 constant + 100 decaying epochs; the reference pix2pix values stay the model/loss classes' own
PIX2PIX_ADAM = OptimConfig(name="adam", lr=1e-4, betas=(0.5, 0.999))


@dataclasses.dataclass(frozen=True)
class Pix2PixPhaseConfig:
    stage: Literal["pix2pix_phase"] = "pix2pix_phase"
    experiment: str = "pix2pix_phase_avg_to_phase0"
    data: PhaseDataConfig = PhaseDataConfig()
    model: Pix2PixModelConfig = Pix2PixModelConfig(generator="unet_512", norm="instance")
    loss: Pix2PixLossConfig = Pix2PixLossConfig(lambda_l1=50.0)
    optim: OptimConfig = PIX2PIX_ADAM            # G (and D unless optim_d is given)
    optim_d: OptimConfig | None = None
    # pix2pix: n_epochs = scheduler.n_epochs_constant, n_epochs_decay = train.epochs - n_epochs_constant
    scheduler: SchedulerConfig = SchedulerConfig(name="linear_decay", n_epochs_constant=100)
    train: TrainConfig = TrainConfig(epochs=200, early_stopping_patience=None, checkpoint_every=5)

    def __post_init__(self) -> None:
        problem = linear_decay_problem(self.scheduler.n_epochs_constant, self.train.epochs)
        if self.scheduler.name == "linear_decay" and problem:
            raise ConfigError(f"{STAGE} config: {problem}")
        if self.loss.lambda_l1 < 0:
            raise ConfigError(f"{STAGE} config: loss.lambda_l1={self.loss.lambda_l1} must be >= 0")

    @property
    def optim_discriminator(self) -> OptimConfig:
        return self.optim if self.optim_d is None else self.optim_d


# ---- networks ---------------------------------------------------------------------------------------------
MIN_NUM_DOWNS = 5  # the pix2pix U-Net's shallowest layout (UNetGeneratorConfig refuses fewer)


def deepest_num_downs(side: Sequence[int]) -> int:
    """Largest ``k`` with every side a multiple of ``2 ** k`` (a U-Net of ``k`` levels fits)."""
    k = 0
    while all(s > 0 and s % 2 ** (k + 1) == 0 for s in side):
        k += 1
    return k


def resolve_num_downs(cfg: Pix2PixModelConfig, side: Sequence[int], where: str = "the shard set") -> int:
    """``model.num_downs`` when given and fitting ``side``; unset: the deepest that fits, at most the generator's.

    Raises :class:`ConfigError` naming the slice size and the valid values when nothing (or not the given
    value) fits.
    """
    cap = GENERATORS[cfg.generator].num_downs
    deepest = deepest_num_downs(side)
    valid = list(range(MIN_NUM_DOWNS, deepest + 1))
    shape = "x".join(str(s) for s in side)
    if cfg.num_downs is None:
        if not valid:
            raise ConfigError(f"{STAGE}: slices in {where} are {shape}, but the pix2pix U-Net needs sides that are "
                              f"multiples of {2 ** MIN_NUM_DOWNS} (num_downs >= {MIN_NUM_DOWNS}); re-prep with "
                              "--size 64, 128, 256 or 512")
        return min(cap, deepest)
    if cfg.num_downs not in valid:
        fits = f"valid model.num_downs for {shape}: {', '.join(map(str, valid))}" if valid else \
            f"no model.num_downs fits {shape}; re-prep with --size 64, 128, 256 or 512"
        raise ConfigError(f"{STAGE}: slices in {where} are {shape}, but a U-Net with num_downs={cfg.num_downs} needs "
                          f"sides that are multiples of {2 ** cfg.num_downs}; {fits} (or leave model.num_downs "
                          f"unset to pick the deepest that fits), or re-prep with --size "
                          f"{max(2 ** cfg.num_downs, 256)}")
    return cfg.num_downs


def generator_config(cfg: Pix2PixModelConfig, side: Sequence[int], where: str = "the shard set") -> UNetGeneratorConfig:
    """The U-Net for slices of ``side``: depth from :func:`resolve_num_downs`, widths/norm from ``cfg``."""
    return dataclasses.replace(GENERATORS[cfg.generator], num_downs=resolve_num_downs(cfg, side, where),
                               ngf=cfg.ngf, norm=cfg.norm, dropout=cfg.dropout)


def build_generator(cfg: Pix2PixModelConfig, side: Sequence[int], where: str = "the shard set") -> UNetGenerator:
    return UNetGenerator(generator_config(cfg, side, where))


def build_discriminator(cfg: Pix2PixModelConfig) -> nn.Module:
    return PatchGANDiscriminator(PatchGANConfig(in_channels=2, ndf=cfg.ndf, n_layers=cfg.n_layers_d,
                                                norm=cfg.norm_d or cfg.norm))


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def sync_batch_norm(module: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm for multi-rank GPU training (statistics over the global batch).

    Must run before the trainer wraps the module in DDP. SyncBatchNorm only runs on accelerators, so CPU
    (gloo) runs keep per-rank BatchNorm. The state-dict keys are unchanged (checkpoints stay loadable into
    the plain generator)."""
    if env.distributed and device.type == "cuda" and _has_batch_norm(module):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


# ---- the trainer's task ------------------------------------------------------------------------------------
class Pix2PixPhaseTask:
    """Modules {"G", "D"}, optimizers {"G", "D"}; D step then G step per batch."""

    def __init__(self, cfg: Pix2PixPhaseConfig, env: DistEnv, device: torch.device) -> None:
        self.cfg = cfg
        self.prep = read_prep_info(cfg.data.root)
        side = slice_side(cfg.data.root, cfg.data.input_field)
        if len(side) != 2:
            raise ConfigError(f"{STAGE}: field {cfg.data.input_field!r} in {cfg.data.root} has shape {side}, "
                              "expected 2D slices; re-run `ctpipe prep nifti-pairs`")
        fields = (cfg.data.input_field, cfg.data.target_field)
        self.train_set, self.val_set, self.test_set = load_splits(cfg.data, fields)
        built = build_model(cfg, {"slice_shape": side, "where": str(cfg.data.root)})
        log.info("%s: U-Net num_downs=%d for %s slices (%s)", STAGE, built["G"].config.num_downs,
                 "x".join(map(str, side)), "model.num_downs" if cfg.model.num_downs is not None else
                 f"the deepest that fits, at most {cfg.model.generator}'s {GENERATORS[cfg.model.generator].num_downs}")
        self.G = sync_batch_norm(built["G"], env, device)
        self.D = sync_batch_norm(built["D"], env, device)
        self.modules: dict[str, nn.Module] = {"G": self.G, "D": self.D}
        self.optimizers = {"G": build_optimizer(self.G.parameters(), cfg.optim),
                           "D": build_optimizer(self.D.parameters(), cfg.optim_discriminator)}
        self.fingerprint = {"model": to_dict(cfg.model), "loss": to_dict(cfg.loss), "optim": to_dict(cfg.optim),
                            "optim_d": to_dict(cfg.optim_discriminator), "slice_shape": list(side),
                            "prep": self.prep.to_dict()}

    def train_step(self, batch: Mapping[str, Any], stepper: Stepper) -> dict[str, torch.Tensor]:
        a, b = batch[self.cfg.data.input_field], batch[self.cfg.data.target_field]
        mode = self.cfg.loss.gan_mode
        with stepper.autocast():
            fake = stepper.module("G")(a)
            d = discriminator_loss(stepper.module("D"), a, b, fake, mode)
        stepper.backward(d.total.float(), "D")
        with stepper.autocast():  # against the updated D, through a detached snapshot of its parameters
            g = generator_loss(self.D, a, b, fake, mode, self.cfg.loss.lambda_l1)
        stepper.backward(g.total.float(), "G")
        return {"G_gan": g.gan.detach(), "G_l1": g.l1.detach(), "D_real": d.real.detach(),
                "D_fake": d.fake.detach()}

    def example_images(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The first slice's input, target and generated image (TensorBoard's validation images)."""
        source = batch[self.cfg.data.input_field]
        return {"input": source[0], "target": batch[self.cfg.data.target_field][0],
                "prediction": self.G(source)[0].float()}

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return slice_metrics(self.G(batch[self.cfg.data.input_field]).float(), batch[self.cfg.data.target_field])


def slice_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-slice values on the [-1, 1] scale: ``loss`` (= L1), PSNR and SSIM with range (-1, 1)."""
    l1 = (pred - target).abs().flatten(1).mean(1)
    return {"loss": l1, metric_column("psnr", SLICE_RANGE): psnr(pred, target, SLICE_RANGE),
            metric_column("ssim", SLICE_RANGE): ssim(pred, target, SLICE_RANGE)}


# ---- final evaluation: whole volumes (ctpipe.stages.phases_common) ------------------------------------------
def predictors(cfg: Pix2PixPhaseConfig, task: Pix2PixPhaseTask, device: torch.device) -> dict[str, Predictor]:
    return phase_predictors(task.G, cfg.data)


PHASE_EVALUATION: Evaluation[Pix2PixPhaseConfig, Pix2PixPhaseTask] = Evaluation(score_split=score_volumes)


# ---- inference: a trained run -> generator + prep settings ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainedGenerator:
    generator: UNetGenerator  # in eval mode, on the requested device
    prep: PrepInfo
    config: Pix2PixPhaseConfig
    checkpoint: Path


def _run_prep(run: RunCheckpoint, cfg: Pix2PixPhaseConfig, data_root: str | Path | None) -> PrepInfo:
    if data_root is not None:
        return read_prep_info(data_root)
    prep = run.inference.get("prep")
    if prep:
        return PrepInfo((float(prep["window_hu"][0]), float(prep["window_hu"][1])), prep["size"])
    try:
        return read_prep_info(cfg.data.root)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run.path} records no prep settings and its shard set {cfg.data.root} is gone; "
                                "pass --data-root with the shard set it was trained on") from None


def _trained_side(run: RunCheckpoint, prep: PrepInfo, cfg: Pix2PixPhaseConfig) -> tuple[int, ...]:
    """The slice shape the generator was trained on: recorded in the checkpoint, else the prep's size."""
    recorded = run.inference.get("slice_shape")
    if recorded:
        return tuple(int(s) for s in recorded)
    if prep.size is not None:
        return (prep.size, prep.size)
    return slice_side(cfg.data.root, cfg.data.input_field)


def build_model(cfg: Pix2PixPhaseConfig, shape: Mapping[str, Any]) -> dict[str, nn.Module]:
    """``{"G": U-Net generator, "D": PatchGAN}`` for slices of ``shape["slice_shape"]``."""
    where = str(shape.get("where", "the shard set"))
    return {"G": build_generator(cfg.model, shape["slice_shape"], where), "D": build_discriminator(cfg.model)}


def load_trained_generator(checkpoint: str | Path | RunCheckpoint, device: torch.device | str = "cpu",
                           data_root: str | Path | None = None) -> TrainedGenerator:
    """Rebuild the generator of a ``pix2pix_phase`` checkpoint (best.pt, latest.pt, epoch_NNN.pt).

    The prep's HU window and slice size come from ``data_root``'s manifest when given, else from the
    checkpoint (recorded at training time), else from the run's shard set (``data.root``).
    """
    run = read_run_checkpoint(checkpoint)
    run.require_stage(STAGE)
    cfg = run.typed_config(Pix2PixPhaseConfig)
    prep = _run_prep(run, cfg, data_root)
    generator = build_generator(cfg.model, _trained_side(run, prep, cfg), str(checkpoint))
    generator.load_state_dict(run.models["G"])
    return TrainedGenerator(freeze(generator, device), prep, cfg, Path(checkpoint))


PIX2PIX_PHASE: Stage[Pix2PixPhaseConfig, Pix2PixPhaseTask] = Stage(
    STAGE, Pix2PixPhaseConfig, Pix2PixPhaseTask, build_model, load_trained_generator, predictors, MODEL_NAME,
    PHASE_EVALUATION)
