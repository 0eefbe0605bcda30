"""Apply trained X-ray -> CT models to one pair of X-rays and write the CT as NIfTI (HU).

``XRAYS`` is either

* an ``.npy`` file holding a float array ``(2, n, n)`` = (frontal, lateral) prepared like the training data
  (:func:`ctpipe.ops.drr.drr_to_image`: values in [0, 1], row 0 superior, frontal column 0 = patient right,
  lateral column 0 = anterior); the field of view of the cube it shows must be given (``fov_mm``), or
* a shard-set folder written by ``ctpipe prep drr`` plus ``sample_id``: the sample's ``xray`` and its
  recorded ``fov_mm`` are used.

``checkpoint`` is a ``stage1_64`` checkpoint (64^3 output; with ``refine`` a ``refine_256`` checkpoint, the
output is the refined 256^3 volume) or a ``direct_256`` checkpoint (256^3). The output volume is in canonical
RAS order with an isotropic spacing ``fov_mm / size`` and the cube centred on the world origin (voxel ``i`` at
``(i - (size - 1) / 2) * spacing`` mm, the convention of :mod:`ctpipe.ops.drr`); values are HU obtained by
inverting the training window: ``HU = low + v * (high - low)`` with ``v`` clamped to [0, 1] (intensities
outside the window were clipped in training and cannot be recovered). The file is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import torch

from ctpipe.atomic import atomic_path
from ctpipe.checkpoint import read_run_checkpoint
from ctpipe.data.shards import SAMPLE_ID_KEY, read_manifest
from ctpipe.errors import UserError
from ctpipe.intensity import unit_interval_to_hu
from ctpipe.stages import get_stage

XRAY_RANGE = (0.0, 1.0)  # drr_to_image's output range
XRAY_TOLERANCE = 0.05  # interpolation or a different renderer may overshoot a little; far outside is refused
INPUT_STAGES = ("stage1_64", "direct_256")


class XRayInputError(UserError, ValueError):
    """X-rays that a model cannot take: wrong shape, NaN/Inf, values far outside [0, 1]."""


def check_xray_values(xray: np.ndarray, where: str) -> None:
    """Refuse NaN/Inf (naming the first bad pixel) and values far outside [0, 1]."""
    finite = np.isfinite(xray)
    if not finite.all():
        view, row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise XRayInputError(f"{where}: {int(np.size(xray) - finite.sum())} NaN/Inf values (first in the "
                             f"{('frontal', 'lateral')[view]} view at row {row}, column {col}); the model would "
                             "return NaN everywhere. Fix the X-ray images (e.g. replace missing pixels)")
    low, high = float(xray.min()), float(xray.max())
    lo, hi = XRAY_RANGE
    if low < lo - XRAY_TOLERANCE or high > hi + XRAY_TOLERANCE:
        raise XRayInputError(f"{where}: values span [{low:.4g}, {high:.4g}], expected [{lo:g}, {hi:g}] as "
                             "`ctpipe prep drr` renders them (ctpipe.ops.drr.drr_to_image); rescale the X-rays "
                             "the same way")

@dataclass(frozen=True)
class XRayInput:
    xray: np.ndarray  # (2, n, n) float32
    fov_mm: float
    source: str


@dataclass(frozen=True)
class InferenceResult:
    path: Path
    shape: tuple[int, int, int]
    spacing_mm: float
    hu_window: tuple[float, float]
    model: str


def load_xrays(xrays: str | os.PathLike[str], sample_id: str | None = None, fov_mm: float | None = None) -> XRayInput:
    """Read ``XRAYS`` (see the module docstring)."""
    path = Path(xrays)
    if path.is_dir():
        return _shard_sample(path, sample_id, fov_mm)
    if path.suffix != ".npy":
        raise ValueError(f"--xrays {path}: pass an .npy file (2, n, n) or a shard-set folder with --sample-id")
    if not path.is_file():
        raise FileNotFoundError(f"--xrays {path} does not exist")
    try:
        array = np.load(path).astype(np.float32)
    except (ValueError, TypeError, OSError) as error:
        raise XRayInputError(f"--xrays {path} is not a numeric .npy array ({error}); save it with "
                             "numpy.save(path, array) as float (2, n, n)") from None
    if array.ndim != 3 or array.shape[0] != 2 or array.shape[1] != array.shape[2]:
        raise ValueError(f"--xrays {path}: expected an array (2, n, n) = (frontal, lateral), got {array.shape}")
    if fov_mm is None or not fov_mm > 0:
        raise ValueError(f"--xrays {path} is an .npy file: give the field of view of the volume it shows with "
                         "--fov-mm (e.g. 320), or pass a shard-set folder with --sample-id")
    check_xray_values(array, f"--xrays {path}")
    return XRayInput(array, float(fov_mm), str(path))


def _shard_sample(root: Path, sample_id: str | None, fov_mm: float | None) -> XRayInput:
    manifest = read_manifest(root)
    if sample_id is None:
        raise ValueError(f"--xrays {root} is a shard set: choose a sample with --sample-id")
    for info in manifest.shards:
        with h5py.File(manifest.shard_path(info), "r") as handle:
            ids = list(handle[SAMPLE_ID_KEY].asstr()[:])
            if sample_id in ids:
                row = ids.index(sample_id)
                xray = np.asarray(handle["xray"][row], dtype=np.float32)
                fov = float(handle["fov_mm"][row][0]) if fov_mm is None else float(fov_mm)
                check_xray_values(xray, f"--xrays {root} sample {sample_id!r}")
                return XRayInput(xray, fov, f"{root}:{sample_id}")
    raise KeyError(f"sample {sample_id!r} is not in the shard set {root}")


def volume_affine(size: int, fov_mm: float) -> np.ndarray:
    """RAS affine of a ``size^3`` cube of edge ``fov_mm`` centred on the origin."""
    spacing = fov_mm / size
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(size - 1) / 2.0 * spacing
    return affine


def save_ct_nifti(volume_hu: np.ndarray, fov_mm: float, out: str | os.PathLike[str]) -> Path:
    """Write a RAS ``(s, s, s)`` HU volume atomically (the temp file keeps the ``.nii``/``.nii.gz`` suffix)."""
    out = Path(out)
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii" if out.suffix == ".nii" else None
    if suffix is None:
        raise ValueError(f"--out {out}: the output must end in .nii or .nii.gz")
    image = nib.Nifti1Image(np.ascontiguousarray(volume_hu, dtype=np.float32), volume_affine(volume_hu.shape[0], fov_mm))
    image.header.set_xyzt_units("mm")
    with atomic_path(out, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    return out


@torch.no_grad()
def predict_unit_volume(checkpoint: str | os.PathLike[str], xray: np.ndarray, refine: str | os.PathLike[str] | None,
                        device: torch.device | str = "cpu") -> tuple[np.ndarray, tuple[float, float], str]:
    """``(volume in [0, 1] (s, s, s), hu_window, model name)`` for one ``(2, n, n)`` X-ray pair."""
    device = torch.device(device)
    run = read_run_checkpoint(checkpoint)  # read once: its stage picks the loader, which takes the same view
    stage = run.stage
    if stage not in INPUT_STAGES:
        hint = " (a refine_256 checkpoint goes with --refine, next to a stage1_64 --checkpoint)" \
            if stage == "refine_256" else ""
        raise XRayInputError(f"--checkpoint {checkpoint} is a {stage!r} checkpoint; `infer xray2ct` "
                             f"takes a {' or '.join(INPUT_STAGES)} run's checkpoints/best.pt{hint}")
    if stage == "direct_256" and refine is not None:
        raise ValueError("--refine applies to stage1_64 checkpoints, not to a direct_256 one")
    model = get_stage(stage).load_trained(run, device)
    volume = model(torch.from_numpy(np.ascontiguousarray(xray))[None].to(device))
    if refine is None:
        return volume[0, 0].cpu().numpy(), model.hu_window, stage
    refiner = get_stage("refine_256").load_trained(refine, device)
    if refiner.model.config.input_size != volume.shape[-1]:
        raise ValueError(f"--refine {refine} refines {refiner.model.config.input_size}^3 volumes but --checkpoint "
                         f"{checkpoint} predicts {volume.shape[-1]}^3; pass the refine_256 run trained on it")
    return refiner(volume)[0, 0].cpu().numpy(), model.hu_window, "refine_256"


def infer_xray2ct(checkpoint: str | os.PathLike[str], xrays: str | os.PathLike[str], out: str | os.PathLike[str],
                  refine: str | os.PathLike[str] | None = None, sample_id: str | None = None,
                  fov_mm: float | None = None, device: torch.device | str = "cpu") -> InferenceResult:
    """X-rays -> CT NIfTI in HU (see the module docstring)."""
    source = load_xrays(xrays, sample_id, fov_mm)
    volume, window, model = predict_unit_volume(checkpoint, source.xray, refine, device)
    path = save_ct_nifti(unit_interval_to_hu(volume, window).astype(np.float32), source.fov_mm, out)
    return InferenceResult(path, tuple(volume.shape), source.fov_mm / volume.shape[0], window, model)  # type: ignore[arg-type]
