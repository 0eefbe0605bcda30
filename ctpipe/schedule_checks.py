"""Epoch counts that must fit inside ``train.epochs`` and a ``train.monitor_mode`` that matches the monitored
metric's direction, checked when a config is built (with the fix)."""

from __future__ import annotations

from typing import Any

from ctpipe.errors import ConfigError
from ctpipe.metrics import higher_is_better


def linear_decay_problem(n_epochs_constant: int, epochs: int) -> str | None:
    """Why ``scheduler.n_epochs_constant`` does not fit ``train.epochs`` and what to set, or None."""
    if 0 <= n_epochs_constant <= epochs:
        return None
    return (f"scheduler.n_epochs_constant={n_epochs_constant} must lie in 0..train.epochs={epochs} (the lr stays "
            f"constant for n_epochs_constant epochs, then decays linearly until train.epochs); set "
            f"scheduler.n_epochs_constant={max(epochs // 2, 0)} (half of train.epochs, like pix2pix's 100 + 100) "
            f"or train.epochs={max(2 * n_epochs_constant, 1)}")


def monitor_problem(monitor: str, monitor_mode: str) -> str | None:
    """Why ``train.monitor_mode`` would keep the WORST checkpoint as ``best.pt`` and what to set, or None."""
    higher = higher_is_better(monitor)
    if higher is None or (monitor_mode == "max") == higher:
        return None
    return (f"train.monitor={monitor!r} is better when {'higher' if higher else 'lower'}, but "
            f"train.monitor_mode={monitor_mode!r} would keep the worst epoch as best.pt; set "
            f"train.monitor_mode={'max' if higher else 'min'}")


def schedule_problems(cfg: Any) -> list[str]:
    """Problems of a stage config's schedule lengths relative to ``train.epochs`` (empty when it fits)."""
    train = getattr(cfg, "train", None)
    if train is None:
        return []
    problems = [p for p in [monitor_problem(train.monitor, train.monitor_mode)] if p]
    scheduler = getattr(cfg, "scheduler", None)
    if scheduler is not None and scheduler.name == "linear_decay":
        problem = linear_decay_problem(scheduler.n_epochs_constant, train.epochs)
        if problem:
            problems.append(problem)
    if 0 < train.epochs < train.val_every:  # epochs=0 scores the untrained model / baselines only
        problems.append(f"train.val_every={train.val_every} > train.epochs={train.epochs}: the run would never "
                        f"validate (no best.pt, no early stopping); set train.val_every=1 (at most {train.epochs})")
    return problems


def check_schedule_lengths(cfg: Any, where: str = "config") -> None:
    problems = schedule_problems(cfg)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
