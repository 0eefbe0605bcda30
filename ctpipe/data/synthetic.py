"""Synthetic LoDoPaB-CT: random phantoms written in the real dataset's raw file layout.

``write_synthetic_lodopab`` produces exactly what the real download unpacks to::

    observation_{part}_NNN.hdf5    dataset 'data' (n, n_angles, n_detector) float32, post-log / MU_MAX
    ground_truth_{part}_NNN.hdf5   dataset 'data' (n, n_pixels, n_pixels) float32 in [0, 1]
    patient_ids_rand_{part}.csv    one absolute integer patient id per line (train < validation < test)

with LoDoPaB's simulation model: the phantom is drawn on a 2x finer grid, the ground truth is its 2x2
mean, ``A = forward_project(fine * MU_MAX)`` (line integrals, 1/m x m), counts ~ Poisson(N0 exp(-A)) with
N0 = 4096, zero counts -> 0.1, stored ``y = -ln(N / N0) / MU_MAX``. Parts have disjoint patients (about
``SLICES_PER_PATIENT`` slices each) and samples are shuffled within a part, as in the real files.
Everything is a deterministic function of ``seed`` (each sample has its own random streams).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import h5py
import numpy as np
import torch

from ctpipe.atomic import atomic_path, atomic_write_text
from ctpipe.data.phantoms import MU_MAX, hu_to_normalised, random_anatomy, render_slice
from ctpipe.ops.geometry import ParallelBeamGeometry
from ctpipe.ops.projector import forward_project
from ctpipe.progress import Progress

PHOTONS_PER_PIXEL = 4096
MIN_PHOTON_COUNT = 0.1
SIMULATION_REFINEMENT = 2
SLICES_PER_PATIENT = 8
PARTS = ("train", "validation", "test")
FULL_GEOMETRY = ParallelBeamGeometry.lodopab()
SMALL_GEOMETRY = ParallelBeamGeometry.lodopab().scaled(128, 180)
SIZES: dict[str, ParallelBeamGeometry] = {"full": FULL_GEOMETRY, "small": SMALL_GEOMETRY}
PROJECTION_BATCH = 32  # slices per forward projection call (CPU: ~0.26 s per small slice at 32, 0.75 s at 1)


def observation_name(part: str, file_index: int) -> str:
    return f"observation_{part}_{file_index:03d}.hdf5"


def ground_truth_name(part: str, file_index: int) -> str:
    return f"ground_truth_{part}_{file_index:03d}.hdf5"


def patient_csv_name(part: str) -> str:
    return f"patient_ids_rand_{part}.csv"


# ---- the noise model -----------------------------------------------------------------------------------
def simulate_observation(
    line_integrals: np.ndarray,
    rng: np.random.Generator,
    photons: float = PHOTONS_PER_PIXEL,
    min_count: float = MIN_PHOTON_COUNT,
) -> np.ndarray:
    """Post-log noisy observation ``-ln(N / N0) / MU_MAX`` of physical line integrals ``A`` (1/m x m).

    ``N ~ Poisson(N0 exp(-A))``; zero counts are replaced by ``min_count`` (LoDoPaB: 0.1).
    """
    counts = rng.poisson(photons * np.exp(-np.asarray(line_integrals, dtype=np.float64))).astype(np.float64)
    counts[counts == 0] = min_count
    return (-np.log(counts / photons) / MU_MAX).astype(np.float32)


def downsample_mean(images: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of the last two axes."""
    *lead, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"downsample_mean: shape {images.shape} is not divisible by {factor}")
    return images.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def project_physical(fine_normalised: np.ndarray, fine_geometry: ParallelBeamGeometry,
                     device: torch.device | str | None = None) -> np.ndarray:
    """Noise-free line integrals ``A`` of ``MU_MAX * images`` (``(B, n, n)`` -> ``(B, n_angles, n_det)``)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    batch = torch.from_numpy(np.ascontiguousarray(fine_normalised, dtype=np.float32) * np.float32(MU_MAX))
    with torch.no_grad():
        sinogram = forward_project(batch[:, None].to(device), fine_geometry)
    return sinogram[:, 0].double().cpu().numpy()


# ---- sample plan ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sample:
    patient: int  # absolute patient id
    slice_index: int
    n_slices: int


def _part_counts(n: int, fractions: Sequence[float]) -> dict[str, int]:
    if len(fractions) != len(PARTS) or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"parts_fractions must be 3 non-negative numbers summing to 1 "
                         f"(train, validation, test), got {tuple(fractions)}")
    counts = {part: int(round(n * f)) for part, f in zip(PARTS[1:], fractions[1:])}
    for part, f in zip(PARTS[1:], fractions[1:]):
        if f > 0:
            counts[part] = max(counts[part], 1)
    counts = {"train": n - sum(counts.values()), **counts}
    if counts["train"] < (1 if fractions[0] > 0 else 0):
        raise ValueError(f"n={n} is too small to give every part with a positive fraction a sample; use n >= 3")
    return counts


def _plan_part(count: int, first_patient: int, rng: np.random.Generator) -> tuple[list[_Sample], int]:
    """Samples of one part (shuffled, like the real files) and the number of patients used."""
    if count == 0:
        return [], 0
    n_patients = math.ceil(count / SLICES_PER_PATIENT)
    sizes = [count // n_patients + (1 if k < count % n_patients else 0) for k in range(n_patients)]
    samples = [_Sample(first_patient + p, s, size) for p, size in enumerate(sizes) for s in range(size)]
    order = rng.permutation(len(samples))
    return [samples[k] for k in order], n_patients


def _fine_phantom(sample: _Sample, seed: int, n_pixels: int) -> np.ndarray:
    anatomy = random_anatomy(np.random.default_rng([seed, 0, sample.patient]))
    position = -1.0 + 2.0 * sample.slice_index / (sample.n_slices - 1) if sample.n_slices > 1 else 0.0
    texture_rng = np.random.default_rng([seed, 1, sample.patient, sample.slice_index])
    return hu_to_normalised(render_slice(anatomy, n_pixels, position, texture_rng))


def _simulate_samples(samples: Sequence[_Sample], seed: int, geometry: ParallelBeamGeometry,
                     device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ground truths ``(B, N, N)`` and noisy observations ``(B, A, D)`` of planned samples."""
    fine_geometry = geometry.refined(SIMULATION_REFINEMENT)
    fine = np.stack([_fine_phantom(s, seed, fine_geometry.n_pixels) for s in samples])
    truth = downsample_mean(fine, SIMULATION_REFINEMENT).astype(np.float32)
    line_integrals = project_physical(fine, fine_geometry, device)
    observations = np.stack([
        simulate_observation(a, np.random.default_rng([seed, 2, s.patient, s.slice_index]))
        for a, s in zip(line_integrals, samples)
    ])
    return truth, observations


# ---- writing ---------------------------------------------------------------------------------------------------
def _write_data_file(path: Path, data: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("data", data=data, dtype="float32", track_times=False)


def _write_part_files(out: Path, part: str, plan: list[_Sample], seed: int, geometry: ParallelBeamGeometry,
                      samples_per_file: int, device: torch.device | str | None, bar: Progress) -> list[str]:
    names = []
    for file_index, start in enumerate(range(0, len(plan), samples_per_file)):
        chunk = plan[start:start + samples_per_file]
        truths, observations = [], []
        for b in range(0, len(chunk), PROJECTION_BATCH):
            truth, observation = _simulate_samples(chunk[b:b + PROJECTION_BATCH], seed, geometry, device)
            truths.append(truth)
            observations.append(observation)
            bar.update(len(truth))
        _write_data_file(out / ground_truth_name(part, file_index), np.concatenate(truths))
        _write_data_file(out / observation_name(part, file_index), np.concatenate(observations))
        names += [ground_truth_name(part, file_index), observation_name(part, file_index)]
    atomic_write_text(out / patient_csv_name(part), "".join(f"{s.patient}\n" for s in plan))
    return names + [patient_csv_name(part)]


def write_synthetic_lodopab(
    out: str | os.PathLike[str],
    n: int,
    size: Literal["full", "small"],
    seed: int = 0,
    samples_per_file: int = 128,
    parts_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    geometry: ParallelBeamGeometry | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``n`` synthetic samples in LoDoPaB's raw layout to ``out``; return a summary dict.

    ``size="full"`` uses the LoDoPaB geometry (362^2 px, 1000 x 513), ``"small"`` uses
    ``SMALL_GEOMETRY`` (128^2 px, 180 angles, 183 bins); ``geometry`` overrides both (for tests).
    ``device`` runs the forward projections (default CPU). Each file is written atomically.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if samples_per_file < 1 or n < 1:
        raise ValueError(f"n and samples_per_file must be positive, got n={n}, samples_per_file={samples_per_file}")
    geometry = geometry if geometry is not None else SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = _part_counts(n, parts_fractions)
    files: list[str] = []
    patients: dict[str, int] = {}
    first_patient = 0
    with Progress(n, "synthetic LoDoPaB", "slices", mode=None if progress else "off") as bar:
        for part_index, part in enumerate(PARTS):
            plan, patients[part] = _plan_part(counts[part], first_patient, np.random.default_rng([seed, 3, part_index]))
            first_patient += patients[part]
            if plan:
                files += _write_part_files(out, part, plan, seed, geometry, samples_per_file, device, bar)
    return {"out": str(out), "size": size, "seed": seed, "geometry": geometry.to_dict(), "samples": counts,
            "patients": patients, "samples_per_file": samples_per_file, "files": sorted(files)}
