"""The boundary between a stage and the trainer: what a stage's task provides, and what it may call.

A stage builds a :class:`Task`; the trainer runs it and hands each training step a :class:`Stepper`. Both
are Protocols, so a task is any object with these members (no base class to inherit). Every sample of the
task's datasets is a mapping that holds :data:`INDEX_KEY`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import Dataset

# Every sample carries an int unique within its dataset (normally its position) under this key; a batch holds
# a list of them. The trainer counts the samples of a training step with it and, in evaluation, counts each
# sample once over all ranks and averages in index order (so the result does not depend on the rank count).
INDEX_KEY = "index"


class TaskContractError(TypeError):
    """A task or its dataset does not provide what the trainer relies on (a bug of the stage's code, so not a
    :class:`~ctpipe.errors.UserError`: it keeps its traceback); the message names what is missing."""


class Stepper(Protocol):
    """What a task's ``train_step`` may call: the trainer's optimisation mechanics."""

    def module(self, name: str) -> nn.Module:
        """The module to run forward in training: the DDP-wrapped and/or compiled form of ``modules[name]``."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The AMP context of ``train.amp`` (a no-op without AMP)."""
        ...

    def backward(self, loss: torch.Tensor, name: str) -> None:
        """Backward for optimizer ``name``; steps it when the gradient-accumulation window is complete."""
        ...


class Task(Protocol):
    """What a stage provides to the trainer.

    Optional members (see :func:`example_images_of` and :func:`finds_unused_parameters`):
    ``example_images(batch) -> {name: tensor}`` for the first validation sample (2D, or a volume of which
    TensorBoard shows the middle slice), logged with ``train.tensorboard=true``; and
    ``ddp_find_unused_parameters = True`` when the loss leaves some trained parameters without gradient (an
    unsupervised output head), so DDP searches for them every step.
    """

    modules: dict[str, nn.Module]          # everything trained or saved, by name
    optimizers: dict[str, Optimizer]        # by name (pix2pix: "G" and "D")
    train_set: Dataset                      # samples are mappings holding INDEX_KEY
    val_set: Dataset | None
    fingerprint: dict[str, Any]             # model/optimizer config: resuming with another one is refused

    def train_step(self, batch: Mapping[str, Any], stepper: Stepper) -> dict[str, torch.Tensor]:
        """Forward through ``stepper.module(name)``, then ``stepper.backward(loss, name)`` per optimizer;
        returns detached loss terms (scalars)."""
        ...

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample validation values, each of shape (B,); must include ``loss``."""
        ...


# the members of Task, checked when a trainer is built (a test keeps this list equal to the Protocol's)
TASK_MEMBERS = ("modules", "optimizers", "train_set", "val_set", "fingerprint", "train_step", "eval_step")


def check_task(task: Task) -> None:
    """Refuse a task that lacks a member of the :class:`Task` contract, naming them all."""
    missing = [name for name in TASK_MEMBERS if not hasattr(task, name)]
    if missing:
        raise TaskContractError(f"{type(task).__name__} lacks {missing} of the trainer's Task contract "
                                "(ctpipe.task.Task): set them in the task's __init__ or define the methods")


@runtime_checkable
class ShowsExamples(Protocol):
    """A task that can show TensorBoard images of a (one-sample) batch."""

    def example_images(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        ...


def example_images_of(task: Task) -> ShowsExamples | None:
    """The task when it provides ``example_images``, else None."""
    return task if isinstance(task, ShowsExamples) else None


def finds_unused_parameters(task: Task) -> bool:
    """The task's ``ddp_find_unused_parameters`` (False when it does not set it)."""
    return bool(getattr(task, "ddp_find_unused_parameters", False))


def check_batch(batch: Mapping[str, Any], dataset: Dataset) -> None:
    """Refuse a batch without :data:`INDEX_KEY`, naming the dataset and the fix."""
    if INDEX_KEY in batch:
        return
    raise TaskContractError(
        f"a batch of {type(dataset).__name__} has no {INDEX_KEY!r} key (it has {sorted(batch)}); the trainer "
        f"counts and orders samples by it: make __getitem__(i) return {{..., {INDEX_KEY!r}: i}}")
