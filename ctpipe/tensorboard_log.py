"""Optional TensorBoard logging (``train.tensorboard=true``): scalars per logged step and per epoch, example
images per validation, written to ``run_dir/tb/`` by rank 0.

The ``tensorboard`` package is an extra (``pip install 'ctpipe[tensorboard]'``); without it a run that asks
for TensorBoard stops at start-up with the install command (:func:`open_tensorboard`), never mid-training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ctpipe.config import ConfigError

TB_DIR = "tb"
INSTALL_HINT = ("train.tensorboard=true needs the tensorboard package: pip install 'ctpipe[tensorboard]' "
                "(or pip install tensorboard), or set train.tensorboard=false")


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # lazy: optional; tensorboard is heavy and may be absent
    except ImportError as err:  # torch's module imports the tensorboard package
        raise ConfigError(f"{INSTALL_HINT} ({err})") from None
    return SummaryWriter


def _as_image(array: np.ndarray) -> np.ndarray:
    """A 2D slice (the middle one of a volume) scaled to [0, 1] by its own range, as (1, H, W)."""
    img = np.asarray(array, dtype=np.float32)
    while img.ndim > 2:
        img = img[img.shape[0] // 2]
    low, high = float(np.min(img)), float(np.max(img))
    return ((img - low) / (high - low if high > low else 1.0))[None]


class TensorBoardLog:
    """Thin wrapper over ``SummaryWriter``: ``train/<name>`` per logged step, ``epoch/<name>`` per epoch."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / TB_DIR
        self.writer = _summary_writer_class()(log_dir=str(self.path))

    def step(self, global_step: int, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            number = float(value)
            if math.isfinite(number):
                self.writer.add_scalar(f"train/{name}", number, global_step)

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """One ``history.csv`` row: every numeric column but ``epoch``."""
        for name, value in row.items():
            if name == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                continue
            if math.isfinite(float(value)):
                self.writer.add_scalar(f"epoch/{name}", float(value), epoch)
        self.writer.flush()  # on disk at every epoch end: a preempted job loses nothing already logged

    def images(self, epoch: int, images: Mapping[str, np.ndarray]) -> None:
        """Example slices (e.g. target and prediction of the first validation sample)."""
        for name, array in images.items():
            self.writer.add_image(f"validation/{name}", _as_image(array), epoch, dataformats="CHW")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def open_tensorboard(enabled: bool, run_dir: str | Path, is_main: bool = True) -> TensorBoardLog | None:
    """A :class:`TensorBoardLog` on rank 0 when ``enabled``; raises :class:`ConfigError` (with the install
    command) on every rank when the package is missing, so the run fails at start-up."""
    if not enabled:
        return None
    _summary_writer_class()
    return TensorBoardLog(run_dir) if is_main else None
