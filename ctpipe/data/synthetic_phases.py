"""Synthetic respiratory/cardiac-phase CT pairs in the users' pix2pix folder layout.

``write_synthetic_phases(out, n)`` writes ``out/trainA/patient_K.nii.gz`` (input: the average of all
phases, like a time-averaged CT) and ``out/trainB/patient_K.nii.gz`` (target: phase 0), in HU (int16),
with a plausible scanner affine (LPS storage by default, so readers must honour the affine).

Each phase is a function of world (RAS, mm) coordinates: air, an elliptical body of soft tissue with a
fat rim, two lungs, a spine, and a beating heart -- an ellipsoid (myocardium shell around a
contrast-filled blood pool) whose radii and centre change with the phase ``t = p / n_phases``
(radius ``r0 * (1 + a cos 2 pi t)``, centre shifted by ``d sin 2 pi t``). Phase 0 is end-diastole
(largest heart); the average is a blurred heart, which is what the network learns to undo.
Deterministic for a given ``seed``; patients differ (body size, heart size/position, beat amplitude).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctpipe.data.synthetic_ct import save_nifti, synthetic_affine

AIR_HU, FAT_HU, TISSUE_HU, LUNG_HU, BONE_HU = -1000.0, -100.0, 40.0, -850.0, 700.0
MYOCARDIUM_HU, BLOOD_HU = 60.0, 250.0
NOISE_SIGMA_HU = 10.0
FOV_MM = 320.0
COVERAGE_MM = 160.0


@dataclass(frozen=True)
class _Patient:
    body_rx: float
    body_ry: float
    heart_centre: tuple[float, float, float]
    heart_radii: tuple[float, float, float]
    beat: float  # relative radius amplitude
    shift: float  # centre displacement (mm) along x over the cycle


def _draw_patient(rng: np.random.Generator) -> _Patient:
    return _Patient(
        body_rx=FOV_MM * rng.uniform(0.40, 0.45),
        body_ry=FOV_MM * rng.uniform(0.29, 0.34),
        heart_centre=(-FOV_MM * rng.uniform(0.03, 0.08), FOV_MM * rng.uniform(0.04, 0.09),
                      rng.uniform(-10, 10)),
        heart_radii=(FOV_MM * rng.uniform(0.10, 0.13), FOV_MM * rng.uniform(0.08, 0.11),
                     COVERAGE_MM * rng.uniform(0.22, 0.3)),
        beat=rng.uniform(0.12, 0.2),
        shift=rng.uniform(4.0, 10.0),
    )


def _inside(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float, float],
            radii: tuple[float, float, float]) -> np.ndarray:
    d2 = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    return d2 <= 1.0


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
    scale = 1.0 + p.beat * np.cos(2.0 * np.pi * t)
    centre = (p.heart_centre[0] + p.shift * np.sin(2.0 * np.pi * t), p.heart_centre[1], p.heart_centre[2])
    outer = tuple(r * scale for r in p.heart_radii)
    inner = tuple(r * 0.7 for r in outer)
    hu[_inside(x, y, z, centre, outer)] = MYOCARDIUM_HU  # type: ignore[arg-type]
    hu[_inside(x, y, z, centre, inner)] = BLOOD_HU  # type: ignore[arg-type]
    return hu


def synthetic_phase_volumes(index: int, size: int = 64, n_slices: int = 16, n_phases: int = 10, seed: int = 0,
                            lps: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input HU int16, target HU int16, affine)`` for patient ``index``: average of phases and phase 0."""
    rng = np.random.default_rng([seed, index])
    patient = _draw_patient(rng)
    shape = (size, size, n_slices)
    affine = synthetic_affine(shape, (FOV_MM / size, FOV_MM / size, COVERAGE_MM / n_slices), lps=lps)
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), axis=0).reshape(3, -1)
    x, y, z = affine[:3, :3] @ ijk + affine[:3, 3:4]
    phases = []
    for p in range(n_phases):
        noise = rng.normal(0.0, NOISE_SIGMA_HU, size=x.shape).astype(np.float32)
        phases.append(phase_hu(x, y, z, patient, p / n_phases) + noise)
    average = np.mean(phases, axis=0)

    def to_int16(hu: np.ndarray) -> np.ndarray:
        return np.clip(np.round(hu), -1024, 3071).astype(np.int16).reshape(shape)

    return to_int16(average), to_int16(phases[0]), affine


def write_synthetic_phases(out: str | Path, n: int, size: int = 64, n_slices: int = 16, n_phases: int = 10,
                           seed: int = 0, subset: str = "train", lps: bool = True) -> list[tuple[Path, Path]]:
    """Write ``n`` pairs ``out/{subset}A/patient_K.nii.gz`` (average) / ``out/{subset}B/...`` (phase 0).

    Returns ``[(input path, target path), ...]``. ``subset`` is "train" or "test".
    """
    if n < 0 or size < 8 or n_slices < 1 or n_phases < 1:
        raise ValueError(f"write_synthetic_phases: need n >= 0, size >= 8, n_slices >= 1, n_phases >= 1; got "
                         f"n={n}, size={size}, n_slices={n_slices}, n_phases={n_phases}")
    if subset not in ("train", "test"):
        raise ValueError(f"write_synthetic_phases: subset={subset!r}, choose 'train' or 'test'")
    root = Path(out)
    pairs = []
    for k in range(n):
        average, phase0, affine = synthetic_phase_volumes(k, size, n_slices, n_phases, seed, lps)
        name = f"patient_{k}.nii.gz"
        a = save_nifti(root / f"{subset}A" / name, average, affine)
        b = save_nifti(root / f"{subset}B" / name, phase0, affine)
        pairs.append((a, b))
    return pairs
