"""Pieces of the ``pix2pix_phase`` stage that are about its data rather than its networks: the prep's settings,
the slice splits, and the final evaluation that rebuilds whole volumes from their slices and scores them in HU
(:func:`ctpipe.volume_scores.evaluate_volume`) for the generator and the ``identity`` baseline."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ctpipe.data.nifti_pairs import prep_settings
from ctpipe.intensity import symmetric_unit_to_hu
from ctpipe.data.shards import read_manifest
from ctpipe.progress import track
from ctpipe.stages.base import Predictor, SplitScores
from ctpipe.train import collate, to_device
from ctpipe.volume_scores import evaluate_volume

if TYPE_CHECKING:  # the config lives with the stage, which imports this module
    from ctpipe.stages.pix2pix_phase import PhaseDataConfig

MODEL_NAME = "pix2pix"
BASELINE_NAME = "identity"
SLICE_RANGE = (-1.0, 1.0)  # the prep's intensity scale (Tanh range)
N_EXAMPLES = 4


# ---- data ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PrepInfo:
    """What inference must repeat: the HU window mapped onto [-1, 1] and the slice side (None = native)."""

    window: tuple[float, float]
    size: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"window_hu": list(self.window), "size": self.size}


def read_prep_info(root: str | Path) -> PrepInfo:
    try:
        manifest = read_manifest(root)
    except FileNotFoundError:
        raise FileNotFoundError(f"no shard set at {root} (manifest.json missing): run `ctpipe prep nifti-pairs` "
                                "or set data.root") from None
    window, size = prep_settings(manifest.attrs)
    return PrepInfo(window, size)


def slice_side(root: str | Path, field: str) -> tuple[int, ...]:
    fields = read_manifest(root).fields
    if field not in fields:
        raise KeyError(f"shard set {root} has no field {field!r}; it has {sorted(fields)}")
    return tuple(fields[field].shape)




# ---- final evaluation: whole volumes -------------------------------------------------------------------------
@dataclasses.dataclass
class VolumeSlices:
    """One volume's axial slices on the [-1, 1] scale, ``(D, H, W)`` each, in slice order: the target and the
    prediction of every model (``identity`` is the input)."""

    patient_id: str
    target: np.ndarray
    predictions: dict[str, np.ndarray]

    @property
    def input(self) -> np.ndarray:
        return self.predictions[BASELINE_NAME]

    @property
    def prediction(self) -> np.ndarray:
        return self.predictions[MODEL_NAME]


def phase_predictors(generator: nn.Module, data: PhaseDataConfig) -> dict[str, Predictor]:
    """The generator and the identity baseline (the input used as the prediction), per batch of slices."""
    return {MODEL_NAME: lambda b: generator(b[data.input_field]), BASELINE_NAME: lambda b: b[data.input_field]}


@torch.no_grad()
def stack_volumes(predictors: Mapping[str, Predictor], dataset: Dataset, data: PhaseDataConfig,
                  device: torch.device, expected_slices: Mapping[str, int] | None = None, label: str = "volumes"
                  ) -> Iterator[VolumeSlices]:
    """Run ``predictors`` over ``dataset`` and yield one :class:`VolumeSlices` per patient, one at a time.

    Relies on the shard-set order (manifest shard order, then row order; a nifti_pairs shard is one volume
    with its slices in order), so a volume's slices are contiguous; a patient that reappears raises.
    ``expected_slices`` (from the manifest's provenance) is checked against what was read.
    """
    loader = DataLoader(dataset, batch_size=data.eval_batch_size, shuffle=False, collate_fn=collate)
    done: set[str] = set()
    current: str | None = None
    keys = ["target", *predictors]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}

    def flush() -> VolumeSlices:
        assert current is not None
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        want = (expected_slices or {}).get(current)
        if want is not None and arrays["target"].shape[0] != want:
            raise ValueError(f"volume {current!r}: {arrays['target'].shape[0]} slices in the shards, the manifest "
                             f"records {want}; re-run the prep")
        done.add(current)
        target = arrays.pop("target")
        return VolumeSlices(current, target, arrays)

    for batch in track(loader, f"final evaluation ({label})", "batches"):
        batch = to_device(batch, device)
        columns = {"target": batch[data.target_field][:, 0].float().cpu().numpy(),
                   **{name: predict(batch).float().clamp(*SLICE_RANGE)[:, 0].cpu().numpy()
                      for name, predict in predictors.items()}}
        for i, patient in enumerate(batch["patient_id"]):
            if patient != current:
                if current is not None:
                    yield flush()
                    parts = {k: [] for k in keys}
                if patient in done:
                    raise ValueError(f"the slices of volume {patient!r} are not contiguous in the shard set")
                current = patient
            for key, values in columns.items():
                parts[key].append(values[i:i + 1])
    if current is not None:
        yield flush()


def predict_volumes(generator: nn.Module, dataset: Dataset, data: PhaseDataConfig, device: torch.device,
                    expected_slices: Mapping[str, int] | None = None, label: str = "volumes") -> Iterator[VolumeSlices]:
    """:func:`stack_volumes` of ``generator`` and the identity baseline."""
    return stack_volumes(phase_predictors(generator, data), dataset, data, device, expected_slices, label)


def volume_rows(volume: VolumeSlices, window: tuple[float, float]) -> dict[str, dict[str, Any]]:
    """``{model: row}`` for every model of ``volume``: PSNR/SSIM/MAE in HU and normalised."""
    target = symmetric_unit_to_hu(volume.target.astype(np.float64), window)
    ident = {"sample_id": volume.patient_id, "patient_id": volume.patient_id,
             "grid": "x".join(str(s) for s in volume.target.shape)}
    return {model: {**ident, **evaluate_volume(symmetric_unit_to_hu(unit.astype(np.float64), window), target, window)}
            for model, unit in volume.predictions.items()}


def expected_slices(root: str | Path) -> dict[str, int]:
    volumes = read_manifest(root).attrs.get("volumes", {})
    return {pid: len(v["slice_indices"]) for pid, v in volumes.items()}


def score_volumes(cfg: Any, task: Any, predictors: Mapping[str, Predictor],
                  dataset: Dataset, device: torch.device, label: str) -> SplitScores:
    """One row per VOLUME and model (rebuilt from its slices, scored in HU); examples: middle slices in HU."""
    scores = SplitScores({name: [] for name in predictors}, {"target": [], **{name: [] for name in predictors}})
    expected = expected_slices(cfg.data.root)
    for volume in stack_volumes(predictors, dataset, cfg.data, device, expected, label):
        for model, row in volume_rows(volume, task.prep.window).items():
            scores.rows[model].append(row)
        if len(scores.examples["target"]) < N_EXAMPLES:
            middle = volume.target.shape[0] // 2
            for key, unit in (("target", volume.target), *volume.predictions.items()):
                scores.examples[key].append(symmetric_unit_to_hu(unit[middle].astype(np.float32), task.prep.window))
    return scores
