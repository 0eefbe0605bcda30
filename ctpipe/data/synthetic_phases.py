"""Synthetic cardiac-phase CT pairs in the users' pix2pix folder layout.

``write_synthetic_phases(out, n)`` writes ``out/trainA/patient_K.nii.gz`` (input: the average of all
phases, like a time-averaged CT) and ``out/trainB/patient_K.nii.gz`` (target: phase 0), in HU (int16),
with a plausible scanner affine (LPS storage by default, so readers must honour the affine).

Each phase is a function of world (RAS, mm) coordinates: air, an elliptical body of soft tissue with a
fat rim, two lungs, a spine, and a beating heart of adult size (radii about 50 x 39 x 48 mm): an
ellipsoid of myocardium around a contrast-filled blood pool. Over the cycle ``t = p / n_phases`` the
outer wall scales by ``1 + wall_beat cos 2 pi t`` (a few percent), the blood pool's share of the radius
by ``pool_ratio + pool_beat cos 2 pi t`` (ejection fractions 59-75 %, mean 68 %: a healthy, brisk heart),
and the heart shifts by ``(shift_x, shift_y) sin 2 pi t`` (4-10 mm). Phase 0 is end-diastole (largest
heart); the average is a blurred heart, which is what the network learns to undo.

Voxels are integrated, not point-sampled: each voxel is the mean of ``oversample ** 3`` sub-voxel
samples (partial-volume edges, as a scanner's detector and reconstruction give), then scanner-like
Gaussian noise is added to every phase. Deterministic for a given ``seed``; patients differ (body
size, heart size/position, beat).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ctpipe.data.synthetic_ct import save_nifti, synthetic_affine
from ctpipe.progress import track

AIR_HU, FAT_HU, TISSUE_HU, LUNG_HU, BONE_HU = -1000.0, -100.0, 40.0, -850.0, 700.0
MYOCARDIUM_HU, BLOOD_HU = 60.0, 250.0
STATIC_HU = (AIR_HU, FAT_HU, TISSUE_HU, LUNG_HU, BONE_HU)
NOISE_SIGMA_HU = 10.0
FOV_MM = 320.0
COVERAGE_MM = 160.0
DEFAULT_OVERSAMPLE = 2


@dataclass(frozen=True)
class _Patient:
    body_rx: float
    body_ry: float
    heart_centre: tuple[float, float, float]
    heart_radii: tuple[float, float, float]  # outer wall at mid-cycle (mm)
    wall_beat: float  # relative amplitude of the outer in-plane radii
    long_beat: float  # relative amplitude of the long-axis (z) radius; the apex stays put
    pool_ratio: float  # blood-pool radius / outer radius, mid-cycle
    pool_beat: float  # amplitude of that ratio
    shift: tuple[float, float]  # centre displacement (mm) in x and y over the cycle


def _draw_patient(rng: np.random.Generator) -> _Patient:
    return _Patient(
        body_rx=FOV_MM * rng.uniform(0.40, 0.45),
        body_ry=FOV_MM * rng.uniform(0.29, 0.34),
        heart_centre=(-FOV_MM * rng.uniform(0.03, 0.08), FOV_MM * rng.uniform(0.04, 0.09),
                      rng.uniform(-10, 10)),
        heart_radii=(FOV_MM * rng.uniform(0.14, 0.17), FOV_MM * rng.uniform(0.11, 0.13),
                     COVERAGE_MM * rng.uniform(0.26, 0.34)),
        wall_beat=rng.uniform(0.05, 0.09),
        long_beat=rng.uniform(0.08, 0.14),
        pool_ratio=rng.uniform(0.68, 0.74),
        pool_beat=rng.uniform(0.06, 0.09),
        shift=(rng.uniform(4.0, 10.0), rng.uniform(2.0, 6.0)),
    )


def _inside(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float, float],
            radii: tuple[float, float, float]) -> np.ndarray:
    d2 = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    return d2 <= 1.0


def heart_geometry(patient: _Patient, t: float) -> tuple[tuple[float, float, float], tuple[float, ...],
                                                           tuple[float, ...]]:
    """``(centre, outer radii, blood-pool radii)`` of the heart at phase ``t`` in [0, 1)."""
    p, c, s = patient, np.cos(2.0 * np.pi * t), np.sin(2.0 * np.pi * t)
    rz = p.heart_radii[2]
    # the base descends towards the fixed apex (at centre_z - rz) as the long axis shortens
    centre = (p.heart_centre[0] + p.shift[0] * s, p.heart_centre[1] + p.shift[1] * s,
              p.heart_centre[2] + rz * p.long_beat * c)
    outer = (p.heart_radii[0] * (1.0 + p.wall_beat * c), p.heart_radii[1] * (1.0 + p.wall_beat * c),
             rz * (1.0 + p.long_beat * c))
    inner = tuple(r * (p.pool_ratio + p.pool_beat * c) for r in outer)
    return centre, outer, inner


def phase_hu(x: np.ndarray, y: np.ndarray, z: np.ndarray, patient: _Patient, t: float) -> np.ndarray:
    """Noise-free HU of one phase (``t`` in [0, 1)) at world points ``(x, y, z)`` (RAS, mm)."""
    p = patient
    hu = np.full(x.shape, AIR_HU, dtype=np.float32)
    body = (x / p.body_rx) ** 2 + (y / p.body_ry) ** 2 <= 1.0
    hu[body] = FAT_HU
    hu[(x / (0.92 * p.body_rx)) ** 2 + (y / (0.9 * p.body_ry)) ** 2 <= 1.0] = TISSUE_HU
    for side in (-1.0, 1.0):
        lung = _inside(x, y, z, (side * 0.42 * p.body_rx, 0.05 * p.body_ry, 0.0),
                       (0.3 * p.body_rx, 0.62 * p.body_ry, 2.0 * COVERAGE_MM))
        hu[lung] = LUNG_HU
    hu[(x / (0.05 * FOV_MM)) ** 2 + ((y + 0.75 * p.body_ry) / (0.05 * FOV_MM)) ** 2 <= 1.0] = BONE_HU
    centre, outer, inner = heart_geometry(p, t)
    hu[_inside(x, y, z, centre, outer)] = MYOCARDIUM_HU  # type: ignore[arg-type]
    hu[_inside(x, y, z, centre, inner)] = BLOOD_HU  # type: ignore[arg-type]
    return hu


def _sub_voxel_points(affine: np.ndarray, shape: tuple[int, int, int],
                      oversample: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """World coordinates of every voxel shifted by each of the ``oversample ** 3`` sub-voxel offsets."""
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), axis=0).reshape(3, -1)
    offsets = (np.arange(oversample) + 0.5) / oversample - 0.5
    for offset in np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3):
        x, y, z = affine[:3, :3] @ (ijk + offset[:, None]) + affine[:3, 3:4]
        yield x, y, z


def clean_phase(patient: _Patient, affine: np.ndarray, shape: tuple[int, int, int], t: float,
                oversample: int = DEFAULT_OVERSAMPLE) -> np.ndarray:
    """Noise-free voxel-integrated HU of phase ``t`` on the grid ``(affine, shape)``: float32, ``shape``."""
    total = np.zeros(int(np.prod(shape)), dtype=np.float64)
    for x, y, z in _sub_voxel_points(affine, shape, oversample):
        total += phase_hu(x, y, z, patient, t)
    return (total / oversample ** 3).astype(np.float32).reshape(shape)


def phase_grid(size: int, n_slices: int, lps: bool = True) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of a synthetic volume: ``FOV_MM`` in-plane, ``COVERAGE_MM`` along z."""
    shape = (size, size, n_slices)
    return shape, synthetic_affine(shape, (FOV_MM / size, FOV_MM / size, COVERAGE_MM / n_slices), lps=lps)


def synthetic_phase_volumes(index: int, size: int = 64, n_slices: int = 16, n_phases: int = 10, seed: int = 0,
                            lps: bool = True, oversample: int = DEFAULT_OVERSAMPLE, subset: str = "train"
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input HU int16, target HU int16, affine)`` for patient ``index``: average of phases and phase 0.

    ``subset="test"`` draws from its own random stream, so test patient K is not training patient K.
    """
    rng = np.random.default_rng([seed, index] if subset == "train" else [seed, index, SUBSET_STREAMS[subset]])
    patient = _draw_patient(rng)
    shape, affine = phase_grid(size, n_slices, lps)
    phases = []
    for p in range(n_phases):
        noise = rng.normal(0.0, NOISE_SIGMA_HU, size=shape).astype(np.float32)
        phases.append(clean_phase(patient, affine, shape, p / n_phases, oversample) + noise)
    average = np.mean(phases, axis=0)

    def to_int16(hu: np.ndarray) -> np.ndarray:
        return np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    return to_int16(average), to_int16(phases[0]), affine


SUBSET_STREAMS = {"train": 0, "test": 1}
SUBSET_PREFIX = {"train": "patient", "test": "test_patient"}  # distinct names: prep refuses an id in both


def write_synthetic_phases(out: str | Path, n: int, size: int = 64, n_slices: int = 16, n_phases: int = 10,
                           seed: int = 0, subset: str = "train", lps: bool = True,
                           oversample: int = DEFAULT_OVERSAMPLE) -> list[tuple[Path, Path]]:
    """Write ``n`` pairs ``out/{subset}A/patient_K.nii.gz`` (average) / ``out/{subset}B/...`` (phase 0).

    Returns ``[(input path, target path), ...]``. ``subset`` is "train" or "test"; test patients are other
    people (their own random stream) named ``test_patient_K``, so ``prep nifti-pairs`` accepts both folders.
    """
    if n < 0 or size < 8 or n_slices < 1 or n_phases < 1 or oversample < 1:
        raise ValueError(f"write_synthetic_phases: need n >= 0, size >= 8, n_slices >= 1, n_phases >= 1, "
                         f"oversample >= 1; got n={n}, size={size}, n_slices={n_slices}, n_phases={n_phases}, "
                         f"oversample={oversample}")
    if subset not in SUBSET_STREAMS:
        raise ValueError(f"write_synthetic_phases: subset={subset!r}, choose 'train' or 'test'")
    root = Path(out)
    pairs = []
    for k in track(range(n), f"synthetic phases ({subset})", "patients"):
        average, phase0, affine = synthetic_phase_volumes(k, size, n_slices, n_phases, seed, lps, oversample, subset)
        name = f"{SUBSET_PREFIX[subset]}_{k}.nii.gz"
        a = save_nifti(root / f"{subset}A" / name, average, affine)
        b = save_nifti(root / f"{subset}B" / name, phase0, affine)
        pairs.append((a, b))
    return pairs
