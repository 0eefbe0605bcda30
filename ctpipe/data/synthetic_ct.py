"""Synthetic chest CT volumes in Hounsfield units, written as real NIfTI files.

Each phantom is a function of **world coordinates** (RAS mm, origin at the body centre), evaluated at
the world position of every voxel through the file's affine, so the anatomy is right in world space
whatever the storage orientation. By default the arrays are stored in LPS order (``affine =
diag(-s, -s, s_z)`` plus an origin), as many DICOM converters do, so readers must honour the affine:
a reader that ignores it sees the patient mirrored.

Anatomy (randomised per patient): elliptical body (soft tissue with a fat rim), two lungs, a heart on
the patient's left, a spine with vertebrae and discs, a sternum, rib-like arcs, soft-tissue
ellipsoids and lung nodules, plus Gaussian noise. Deterministic for a given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ctpipe.atomic import atomic_path
from ctpipe.progress import track

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -850.0
BONE_HU = 700.0
RIB_HU = 600.0
NOISE_SIGMA_HU = 15.0


@dataclass(frozen=True)
class _Patient:
    body_rx: float  # semi-axis toward Right (mm)
    body_ry: float  # semi-axis toward Anterior (mm)
    lung_scale: float
    heart_shift: float
    blobs: tuple[tuple[float, ...], ...]  # (cx, cy, cz, rx, ry, rz, hu)


def _draw_patient(rng: np.random.Generator, fov_mm: float) -> _Patient:
    scale = fov_mm / 320.0
    blobs = []
    for _ in range(int(rng.integers(2, 5))):
        blobs.append((
            float(rng.uniform(-40, 40)) * scale, float(rng.uniform(-20, 40)) * scale, float(rng.uniform(-120, -60)) * scale,
            float(rng.uniform(15, 35)) * scale, float(rng.uniform(15, 30)) * scale, float(rng.uniform(15, 30)) * scale,
            float(rng.uniform(10, 80)),
        ))
    for _ in range(int(rng.integers(0, 3))):  # lung nodules
        side = float(rng.choice([-1.0, 1.0]))
        blobs.append((
            side * float(rng.uniform(50, 90)) * scale, float(rng.uniform(-20, 30)) * scale, float(rng.uniform(-30, 60)) * scale,
            *(float(rng.uniform(4, 9)) * scale,) * 3,
            float(rng.uniform(-100, 50)),
        ))
    return _Patient(
        body_rx=float(rng.uniform(135, 150)) * scale,
        body_ry=float(rng.uniform(90, 110)) * scale,
        lung_scale=float(rng.uniform(0.9, 1.05)),
        heart_shift=float(rng.uniform(-10, 10)) * scale,
        blobs=tuple(blobs),
    )


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, c: Sequence[float], r: Sequence[float]) -> np.ndarray:
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def phantom_hu(x: np.ndarray, y: np.ndarray, z: np.ndarray, patient: _Patient, fov_mm: float) -> np.ndarray:
    """HU at world points (RAS mm, body centred at the origin)."""
    s = fov_mm / 320.0
    hu = np.full(x.shape, AIR_HU, dtype=np.float32)
    body_r = (x / patient.body_rx) ** 2 + (y / patient.body_ry) ** 2
    hu[body_r <= 1.0] = FAT_HU
    hu[body_r <= 0.85] = SOFT_TISSUE_HU
    lungs = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        lungs |= _ellipsoid(x, y, z, (side * 65 * s, 5 * s, 20 * s), (48 * s * patient.lung_scale, 65 * s, 95 * s * patient.lung_scale))
    hu[lungs] = LUNG_HU
    heart = _ellipsoid(x, y, z, (-25 * s + patient.heart_shift, 25 * s, -15 * s), (45 * s, 40 * s, 50 * s))  # patient's left
    hu[heart] = SOFT_TISSUE_HU
    for blob in patient.blobs:
        hu[_ellipsoid(x, y, z, blob[0:3], blob[3:6])] = blob[6]
    # ribs: thin elliptical arcs on the inner body outline, slanted, posterior and lateral parts
    theta = np.arctan2(y / patient.body_ry, x / patient.body_rx)
    slanted_z = z + 12 * s * np.sin(theta)
    rib_level = np.abs(((slanted_z + 200 * s) % (28 * s)) - 14 * s) < 4 * s
    ring = (body_r >= 0.78**2) & (body_r <= 0.86**2) & (y < 0.6 * patient.body_ry) & (np.abs(z) < 110 * s)
    hu[ring & rib_level] = RIB_HU
    # sternum (anterior) and spine (posterior): vertebrae with discs every 30 mm
    hu[(np.abs(x) < 12 * s) & (np.abs(y - 0.78 * patient.body_ry) < 6 * s) & (np.abs(z) < 90 * s)] = BONE_HU - 100
    spine = (x / (18 * s)) ** 2 + ((y + 0.62 * patient.body_ry) / (16 * s)) ** 2 <= 1.0
    disc = np.abs(((z + 300 * s) % (30 * s)) - 15 * s) > 12 * s
    hu[spine] = BONE_HU
    hu[spine & disc] = 80.0
    return hu


def synthetic_affine(shape: Sequence[int], spacing_mm: Sequence[float], lps: bool = True) -> np.ndarray:
    """Affine with the volume centre at world (0, 0, 0); LPS storage (flip x, y) when ``lps``."""
    signs = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(signs * np.asarray(spacing_mm, dtype=float))
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def synthetic_ct_volume(
    index: int, shape: Sequence[int], spacing_mm: Sequence[float], seed: int = 0, lps: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: ``(hu int16 array in storage order, affine)``.

    The storage order (``lps``) changes the array and the affine but not the image in world space:
    ``lps=True`` gives exactly ``lps=False``'s array flipped along the first two axes.
    """
    rng = np.random.default_rng([seed, index])
    fov_mm = float(shape[0] * spacing_mm[0])
    patient = _draw_patient(rng, fov_mm)
    affine = synthetic_affine(shape, spacing_mm, lps=lps)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=0).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    hu = phantom_hu(world[0], world[1], world[2], patient, fov_mm).reshape(tuple(shape))
    noise = rng.normal(0.0, NOISE_SIGMA_HU, size=hu.shape).astype(np.float32)  # drawn in RAS index order
    hu = hu + (noise[::-1, ::-1] if lps else noise)  # so that it sits at the same world points either way
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI-1 image (units mm, sform/qform = scanner) atomically."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    return path


def write_synthetic_ct(
    out: str | Path,
    n: int,
    size: int = 64,
    spacing_mm: float | Sequence[float] = (5.0, 5.0, 5.0),
    seed: int = 0,
    lps: bool = True,
) -> list[Path]:
    """Write ``n`` phantoms ``ct_0000.nii.gz ...`` of ``size^3`` voxels into ``out``; returns their paths.

    ``spacing_mm`` is (x, y, z) in storage order; the default 5 mm gives a 320 mm field of view at
    64 voxels. Patient id = file stem (``ct_0000``).
    """
    if n < 0 or size < 8:
        raise ValueError(f"write_synthetic_ct: need n >= 0 and size >= 8, got n={n}, size={size}")
    spacing = (float(spacing_mm),) * 3 if isinstance(spacing_mm, (int, float)) else tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3:
        raise ValueError(f"write_synthetic_ct: spacing_mm must be one number or three, got {spacing_mm!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in track(range(n), "synthetic CT", "volumes"):
        hu, affine = synthetic_ct_volume(index, (size, size, size), spacing, seed=seed, lps=lps)
        paths.append(save_nifti(folder / f"ct_{index:04d}.nii.gz", hu, affine))
    return paths
