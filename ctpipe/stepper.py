"""The optimisation mechanics a task's training step calls (the :class:`~ctpipe.task.Stepper` contract)."""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
from torch import nn
from torch.optim import Optimizer

from ctpipe import distributed as dist_utils
from ctpipe.config import TrainConfig
from ctpipe.errors import UserError
from ctpipe.schedules import EpochScheduler
from ctpipe.task import Stepper


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class TrainStepper(Stepper):
    """AMP autocast, GradScaler, gradient accumulation and clipping for the task's optimizers: the trainer's
    :class:`~ctpipe.task.Stepper`."""

    def __init__(self, cfg: TrainConfig, device: torch.device, optimizers: Mapping[str, Optimizer],
                 schedulers: Mapping[str, EpochScheduler], modules: Mapping[str, nn.Module] | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.optimizers, self.schedulers = optimizers, schedulers
        self.modules = dict(modules or {})
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        use_scaler = cfg.amp == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.micro_step = 0

    def module(self, name: str) -> nn.Module:
        """The module to run forward in training: DDP-wrapped (gradients all-reduced) and/or compiled."""
        return self.modules[name]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def at_boundary(self) -> bool:
        return (self.micro_step + 1) % self.cfg.grad_accum == 0

    def backward(self, loss: torch.Tensor, name: str) -> None:
        """Backward for optimizer ``name``; steps it when the accumulation window is complete."""
        self._agree_finite(loss, name)
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        if not self.at_boundary:
            return
        optimizer = self.optimizers[name]
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.schedulers[name].after_step()

    def _agree_finite(self, loss: torch.Tensor, name: str) -> None:
        """Every rank learns whether any rank's loss is NaN/Inf before any rank enters backward (where DDP
        all-reduces gradients): all raise together instead of the healthy ranks waiting for the timeout."""
        finite = bool(torch.isfinite(loss.detach()).all())
        world = dist_utils.world_size()
        if dist_utils.group_active():
            votes = torch.zeros(world, dtype=torch.float64)
            votes[dist_utils.rank()] = float(not finite)
            bad = [r for r, v in enumerate(dist_utils.all_reduce_sum(votes).tolist()) if v > 0]
        else:
            bad = [] if finite else [0]
        if bad:
            where = f" on rank(s) {bad}" if world > 1 else ""
            raise NonFiniteLossError(f"non-finite loss{where} for optimizer {name!r} (this rank's loss: "
                                     f"{float(loss.detach().float().mean())}); training stops on every rank and "
                                     "the last good checkpoint is kept: lower the learning rate, enable "
                                     "train.grad_clip, or use train.amp=bf16 instead of fp16, then resume")

    def end_micro_step(self) -> None:
        self.micro_step += 1
