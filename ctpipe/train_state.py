"""The trainer's state: what changes during training besides weights and optimizers, and its checkpoint form.

:class:`TrainState` is shared by every rank (rank 0 saves it); :class:`RankState` is each rank's own part (its
running sums of the epoch and, in the checkpoint, its RNG states). Both are mutable: the trainer advances them
in place after every step, and a frozen copy per step would still hold the same growing history lists.

The checkpoint keys are those ctpipe has always written (``epoch``, ``step_in_epoch``, ... at the top level of
the checkpoint dict, the per-rank parts in ``rank_states``), so run folders written before these classes
existed resume unchanged, and checkpoints written now still load in older code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ctpipe import checkpoint as ckpt
from ctpipe.errors import RunFolderError


def _require(saved: Mapping[str, Any], keys: list[str], path: Path | str, where: str) -> None:
    """Refuse a checkpoint without the training-state ``keys``, before anything is restored from it."""
    missing = [k for k in keys if k not in saved]
    if missing:
        raise RunFolderError(
            f"{path} lacks the training-state key(s) {missing}{where}, so it cannot resume; it was written by "
            "another program or an incompatible ctpipe version. Start anew with --restart (the old content is "
            "moved to an archive-<time>/ folder) or use a new --run-dir")


@dataclass
class TrainState:
    """Where training stands, shared by all ranks: position, early stopping, and the tables written so far."""

    epoch: int = 0                      # completed epochs
    step_in_epoch: int = 0              # steps done in the current epoch
    global_step: int = 0
    best_metric: float | None = None
    bad_epochs: int = 0                 # validations in a row without improvement
    history: list[dict[str, Any]] = field(default_factory=list)   # one row per epoch: history.csv
    timing: list[dict[str, Any]] = field(default_factory=list)    # one row per epoch: timing.csv
    epoch_elapsed: float = 0.0          # seconds spent in the current epoch before an interruption
    stopped_early: bool = False

    @property
    def is_fresh(self) -> bool:
        """Nothing trained yet."""
        return not self.history and self.global_step == 0

    def advance_step(self) -> None:
        self.step_in_epoch += 1
        self.global_step += 1

    def finish_epoch(self, row: dict[str, Any], timing: dict[str, Any]) -> None:
        """Record the epoch's history and timing rows and move to the start of the next epoch."""
        self.history.append(row)
        self.timing.append(timing)
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_elapsed = 0.0

    def record_monitor(self, value: float, mode: Literal["min", "max"]) -> bool:
        """Update the best value and the count of epochs without improvement; True when ``value`` is the best."""
        best = self.best_metric
        better = best is None or (value < best if mode == "min" else value > best)
        if better:
            self.best_metric, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return better

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's top-level training-state keys (plain Python types, loadable with weights_only)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], path: Path | str = "checkpoint") -> "TrainState":
        """The state saved by :meth:`to_dict` (other keys of the checkpoint dict are ignored)."""
        _require(saved, [f.name for f in dataclasses.fields(cls)], path, "")
        return cls(epoch=int(saved["epoch"]), step_in_epoch=int(saved["step_in_epoch"]),
                   global_step=int(saved["global_step"]),
                   best_metric=None if saved["best_metric"] is None else float(saved["best_metric"]),
                   bad_epochs=int(saved["bad_epochs"]), history=[dict(r) for r in saved["history"]],
                   timing=[dict(r) for r in saved["timing"]], epoch_elapsed=float(saved["epoch_elapsed"]),
                   stopped_early=bool(saved["stopped_early"]))


@dataclass
class RankState:
    """One rank's running sums of the current epoch's loss terms (each rank sums over its own samples)."""

    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_count: int = 0

    def add(self, terms: Mapping[str, torch.Tensor | float]) -> None:
        for key, value in terms.items():
            self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + float(value)
        self.epoch_count += 1

    def to_dict(self, device: torch.device | None) -> dict[str, Any]:
        """This rank's entry of the checkpoint's ``rank_states``: the sums and the RNG states now."""
        return {"rng": ckpt.capture_rng(device), "epoch_sums": dict(self.epoch_sums), "epoch_count": self.epoch_count}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], path: Path | str = "checkpoint") -> "RankState":
        """The sums of an entry of ``rank_states`` (its RNG states are restored by :meth:`restore`)."""
        _require(saved, [f.name for f in dataclasses.fields(cls)], path, " in 'rank_states'")
        return cls(epoch_sums={k: float(v) for k, v in saved["epoch_sums"].items()},
                   epoch_count=int(saved["epoch_count"]))

    @classmethod
    def restore(cls, saved: Mapping[str, Any], device: torch.device | None,
                path: Path | str = "checkpoint") -> "RankState":
        """Restore the RNG states of an entry of ``rank_states`` and return its sums."""
        _require(saved, ["rng"], path, " in 'rank_states'")
        state = cls.from_dict(saved, path)
        ckpt.restore_rng(saved["rng"], device)
        return state
