"""``train.deterministic`` and seeding: what makes a run reproducible beyond the checkpointed state."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch

from ctpipe.errors import UserError


class NondeterministicOpError(UserError, RuntimeError):
    """``train.deterministic=true`` and an operation of the model has no deterministic kernel."""


_NONDETERMINISTIC = "does not have a deterministic implementation"


@contextlib.contextmanager
def named_nondeterminism() -> Iterator[None]:
    """Turn torch's error for an op without a deterministic kernel into one that names the op and the fix."""
    try:
        yield
    except RuntimeError as err:
        if _NONDETERMINISTIC not in str(err):
            raise
        op = str(err).split(_NONDETERMINISTIC)[0].strip()
        raise NondeterministicOpError(
            f"train.deterministic=true, but {op} has no deterministic kernel on this device ({err}). Set "
            "train.deterministic=false (the run is then not bit-reproducible on GPU), or change the model to "
            "avoid this op") from err


def configure_determinism(enabled: bool) -> None:
    """``train.deterministic``: torch's deterministic algorithms, and the cuBLAS workspace setting that
    deterministic cuBLAS needs (set in the environment before the first CUDA/cuBLAS call)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (before a stage builds its task)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
