"""Complete, atomic, safely loadable training checkpoints.

A checkpoint is one dict of tensors and plain Python types (models, optimizers, schedulers, scaler, epoch,
step within the epoch, RNG states, early-stopping state, history, config). It is written to a temporary file,
fsynced and renamed; it is read with ``torch.load(weights_only=True)``. Before ``latest.pt`` is replaced the
old one becomes ``previous.pt``, so a damaged ``latest.pt`` never costs more than one save interval.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import random
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

import numpy as np
import torch

from ctpipe.atomic import atomic_path
from ctpipe.config import from_dict

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


C = TypeVar("C")
# Fingerprint entries that inference must repeat (the grid a run was trained on, the prep it read).
INFERENCE_KEYS = ("output_size", "slice_shape", "prep")
RUN_CONFIG = "config.json"


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """A typed view of one training checkpoint: what a stage needs to rebuild and describe its trained model.

    ``inference`` holds what was recorded at training time for inference to repeat (:data:`INFERENCE_KEYS`
    of the fingerprint: the output grid, the slice shape, the prep's window and size), so a model can be
    rebuilt without the data it was trained on."""

    path: Path
    stage: str
    config: dict[str, Any]
    fingerprint: dict[str, Any]
    inference: dict[str, Any]
    models: dict[str, dict[str, torch.Tensor]]
    epoch: int
    global_step: int

    def typed_config(self, config_cls: type[C]) -> C:
        """The run's config as ``config_cls`` (unknown keys are refused, naming this file)."""
        return from_dict(config_cls, self.config, f"{self.path} config")

    def require_stage(self, stage: str, hint: str = "") -> None:
        """Refuse a checkpoint of another stage, naming the file, its stage and what to pass instead."""
        if self.stage != stage:
            raise ValueError(f"{self.path} is a {self.stage!r} checkpoint, not a {stage!r} one"
                             + (f"; {hint}" if hint else f"; pass a {stage} run's checkpoints/best.pt"))


def _json_dict(value: Any) -> dict[str, Any]:
    """A checkpoint's JSON-string entry (``config``, ``fingerprint``) as a dict; empty when absent."""
    if not value:
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def _run_folder_config(path: Path) -> dict[str, Any]:
    """``RUN/config.json`` for ``RUN/checkpoints/<file>.pt`` (checkpoints that carry no config)."""
    config = path.resolve().parent.parent / RUN_CONFIG
    if not config.is_file():
        raise ValueError(f"checkpoint {path} records no config and {config} does not exist; pass a checkpoint "
                         "written by `ctpipe train` (a run folder's checkpoints/best.pt)")
    return json.loads(config.read_text())


def run_checkpoint(state: Mapping[str, Any], path: str | Path) -> RunCheckpoint:
    """The :class:`RunCheckpoint` view of a loaded checkpoint dict (config from the run folder when absent)."""
    path = Path(path)
    config = _json_dict(state.get("config")) or _run_folder_config(path)
    fingerprint = _json_dict(state.get("fingerprint"))
    return RunCheckpoint(
        path=path, stage=str(config.get("stage", "")), config=config, fingerprint=fingerprint,
        inference={k: fingerprint[k] for k in INFERENCE_KEYS if k in fingerprint},
        models=dict(state.get("models", {})), epoch=int(state.get("epoch", 0)),
        global_step=int(state["global_step"]),
    )


def read_run_checkpoint(path: str | Path | RunCheckpoint, map_location: str | torch.device = "cpu") -> RunCheckpoint:
    """Load ``path`` (safely, see :func:`load_checkpoint`) and return its typed view; a view already read is
    returned as it is (a caller that read the checkpoint to learn its stage does not load it twice)."""
    if isinstance(path, RunCheckpoint):
        return path
    return run_checkpoint(load_checkpoint(path, map_location), path)


def resume_candidates(ckpt_dir: str | Path) -> list[Path]:
    """Files that may hold the newest state, newest first: by modification time, ties broken in the order
    latest.pt, previous.pt, then periodic files from the highest epoch down."""
    ckpt_dir = Path(ckpt_dir)
    periodic = sorted(
        (p for p in ckpt_dir.glob("epoch_*.pt") if _PERIODIC.search(p.name)),
        key=lambda p: int(_PERIODIC.search(p.name).group(1)),  # type: ignore[union-attr]
        reverse=True,
    )
    named = [p for p in [ckpt_dir / LATEST, ckpt_dir / PREVIOUS] + periodic if p.exists()]
    order = {p: i for i, p in enumerate(named)}
    return sorted(named, key=lambda p: (-p.stat().st_mtime_ns, order[p]))


def load_newest(ckpt_dir: str | Path, map_location: str | torch.device = "cpu",
                unreadable: list[str] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint, loaded once: candidates are tried newest first and the first one that
    loads wins (a pix2pix checkpoint is ~0.84 GB, so no rank reads the others). Unreadable files are logged,
    skipped and, when ``unreadable`` is given, appended to it as messages."""
    for path in resume_candidates(ckpt_dir):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as err:
            log.warning("skipping %s", err)
            if unreadable is not None:
                unreadable.append(str(err))
    return None


HISTORY_FILES = ("history.csv", f"checkpoints/{BEST}")


def run_history(run_dir: str | Path) -> list[Path]:
    """Files showing that ``run_dir`` has trained before (so starting it anew would lose or overwrite work)."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in HISTORY_FILES if (run_dir / name).exists()]
    events = run_dir / "events.jsonl"
    if events.exists() and '"epoch_end"' in events.read_text(errors="replace"):
        found.append(events)
    return found


def archive_run(run_dir: str | Path, stamp: str | None = None) -> Path | None:
    """Move everything in ``run_dir`` (except earlier archives) into ``run_dir/archive-<UTC time>/``, so a
    restarted run starts empty and nothing of the old one is lost. Returns the archive (None: nothing to move)."""
    run_dir = Path(run_dir)
    keep = ("archive-", "run.lock")  # earlier archives; the lock of the process restarting the run
    entries = [p for p in run_dir.iterdir() if not p.name.startswith(keep)] if run_dir.is_dir() else []
    if not entries:
        return None
    stamp = stamp or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    archive = run_dir / f"archive-{stamp}"
    archive.mkdir()
    for entry in entries:
        entry.replace(archive / entry.name)
    return archive


# ---- RNG state ---------------------------------------------------------------------------------------
def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """All RNG states as tensors and plain types (loadable with weights_only=True).

    Of the CUDA generators only the one of ``device`` (the rank's own GPU) is saved: a resume may see fewer
    GPUs, and the other devices' generators are not this rank's to restore."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`capture_rng`'s states; the CUDA one goes to ``device`` (older files that saved every
    device's generator restore the entry of ``device``'s index when there is one)."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if device is None or device.type != "cuda":
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state and (device.index or 0) < len(state["cuda"]):
        torch.cuda.set_rng_state(state["cuda"][device.index or 0], device)
