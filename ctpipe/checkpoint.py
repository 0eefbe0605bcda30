"""Complete, atomic, safely loadable training checkpoints.

A checkpoint is one dict of tensors and plain Python types (models, optimizers, schedulers, scaler, epoch,
step within the epoch, RNG states, early-stopping state, history, config). It is written to a temporary file,
fsynced and renamed; it is read with ``torch.load(weights_only=True)``. Before ``latest.pt`` is replaced the
old one becomes ``previous.pt``, so a damaged ``latest.pt`` never costs more than one save interval.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctpipe.atomic import atomic_path

log = logging.getLogger(__name__)

LATEST = "latest.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"
_PERIODIC = re.compile(r"epoch_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read; the message names it."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def save_latest(state: dict[str, Any], ckpt_dir: str | Path) -> Path:
    """Rotate ``latest.pt`` to ``previous.pt`` and write the new ``latest.pt`` atomically."""
    ckpt_dir = Path(ckpt_dir)
    latest = ckpt_dir / LATEST
    if latest.exists():
        latest.replace(ckpt_dir / PREVIOUS)
    return save_checkpoint(state, latest)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # truncated zip, bad pickle, unsupported type...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
                              "it is probably truncated or corrupt") from err
    if not isinstance(state, dict) or "global_step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a ctpipe training checkpoint (no 'global_step')")
    return state


def resume_candidates(ckpt_dir: str | Path) -> list[Path]:
    """Files that may hold the newest state, most likely newest first."""
    ckpt_dir = Path(ckpt_dir)
    periodic = sorted(
        (p for p in ckpt_dir.glob("epoch_*.pt") if _PERIODIC.search(p.name)),
        key=lambda p: int(_PERIODIC.search(p.name).group(1)),  # type: ignore[union-attr]
        reverse=True,
    )
    named = [ckpt_dir / LATEST, ckpt_dir / PREVIOUS]
    return [p for p in named + periodic if p.exists()]


def load_newest(ckpt_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The readable checkpoint with the highest global step; unreadable files are reported and skipped."""
    best: tuple[Path, dict[str, Any]] | None = None
    for path in resume_candidates(ckpt_dir):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as err:
            log.warning("skipping %s", err)
            continue
        if best is None or state["global_step"] > best[1]["global_step"]:
            best = (path, state)
    return best


# ---- RNG state ---------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors and plain types (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
