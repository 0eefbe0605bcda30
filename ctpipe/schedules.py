"""Optimizers and learning-rate schedulers from config (explicit dicts, no reflection)."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, OneCycleLR, ReduceLROnPlateau

from ctpipe.config import OptimConfig, SchedulerConfig

_OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the optimizer got no trainable parameters: check which modules are frozen")
    return _OPTIMIZERS[cfg.name](params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def linear_decay_factor(epoch: int, n_constant: int, n_total: int) -> float:
    """pix2pix rule: 1 for the first ``n_constant`` epochs, then linear decay reaching 0 after ``n_total``."""
    n_decay = max(n_total - n_constant, 1)
    return 1.0 - max(0, epoch + 1 - n_constant) / float(n_decay + 1)


class EpochScheduler:
    """One scheduler with a uniform interface: ``after_step()`` per optimizer step, ``after_epoch(metric)``."""

    def __init__(self, optimizer: Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int) -> None:
        """``steps_per_epoch`` counts optimizer steps (after gradient accumulation)."""
        self.cfg = cfg
        self.impl: Any
        if cfg.name == "plateau":
            self.impl = ReduceLROnPlateau(optimizer, factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr)
        elif cfg.name == "cosine":
            self.impl = CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=cfg.min_lr)
        elif cfg.name == "onecycle":
            max_lr = [group["lr"] for group in optimizer.param_groups]
            # +1: the scheduler is stepped after the last optimizer step too; PyTorch would evaluate the cycle
            # past its end there (the learning rate climbs again) if total_steps were exactly the step count
            self.impl = OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(epochs * steps_per_epoch, 1) + 1,
                                   pct_start=cfg.pct_start)
        elif cfg.name == "linear_decay":
            n_const = cfg.n_epochs_constant
            self.impl = LambdaLR(optimizer, lambda e: linear_decay_factor(e, n_const, epochs))
        else:
            self.impl = None

    def after_step(self) -> None:
        if self.cfg.name == "onecycle":
            self.impl.step()

    def after_epoch(self, metric: float | None) -> None:
        if self.cfg.name == "plateau":
            if metric is not None:
                self.impl.step(metric)
        elif self.cfg.name in ("cosine", "linear_decay"):
            self.impl.step()

    def rescale_base_lrs(self, optimizer: Optimizer, factors: Sequence[float]) -> None:
        """Move a restored optimizer/scheduler pair to new base learning rates (``factors``: new / old, one per
        param group), so that from here on the lr is what a run started with the new base lr would have now.

        Cosine, OneCycle, linear decay and a constant lr are functions of (base lr, step): their base values are
        scaled and the current lr recomputed from them (cosine's floor ``min_lr`` stays where the config puts
        it). Plateau depends on the history of the metric: its current lr is scaled, never below ``min_lr``.
        """
        for group, factor in zip(optimizer.param_groups, factors):
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # max/min_lr: OneCycle's cycle ends
                if isinstance(group.get(key), float):
                    group[key] *= factor
        if self.impl is None:
            return
        if self.cfg.name == "plateau":
            for group, floor in zip(optimizer.param_groups, self.impl.min_lrs):
                group["lr"] = max(group["lr"], floor)
        else:
            self.impl.base_lrs = [lr * f for lr, f in zip(self.impl.base_lrs, factors)]
        if self.cfg.name == "cosine":
            cos = (1 + math.cos(math.pi * self.impl.last_epoch / self.impl.T_max)) / 2
            for group, base in zip(optimizer.param_groups, self.impl.base_lrs):
                group["lr"] = self.impl.eta_min + (base - self.impl.eta_min) * cos
        self.impl._last_lr = [group["lr"] for group in optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {} if self.impl is None else self.impl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.impl is not None:
            self.impl.load_state_dict(state)
