"""Ingestion of the raw LoDoPaB-CT layout into a shard set (:mod:`ctpipe.data.shards`).

Raw layout (Zenodo record 3384092, as read by dival's ``LoDoPaBDataset``)::

    observation_{part}_NNN.hdf5    dataset 'data': (n, 1000, 513) float32, post-log / mu_max
    ground_truth_{part}_NNN.hdf5   dataset 'data': (n, 362, 362) float32 in [0, 1]
    patient_ids_rand_{part}.csv    optional: one integer patient id per line, one line per sample of the
                                   part in file order; ids are absolute (train < validation < test)

with ``part`` in train / validation / test, ``NNN`` = 000, 001, ... and 128 samples per file (the last
one shorter). Smaller sets in the same layout (``lodopab().scaled(n_pixels, n_angles)``) are accepted.

One shard per raw file pair; shards are numbered globally in the order train, validation, test and file
index. Array task ``i`` of ``n`` writes the shards with ``index % n == i``; every task validates the whole
layout's metadata first (so structural errors surface before anything is written) and each input file's
data before writing its shard. The task that finds every shard complete writes the manifest. Patient ids
are ``"{part}-{csv id:04d}"``; without the CSV each raw file is one pseudo-patient ``"{part}-file{NNN}"``.
The split of a sample is its part.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ctpipe.data.phantoms import MU_MAX
from ctpipe.data.shards import (
    MANIFEST_NAME,
    FieldSpec,
    claim_output,
    finalize_manifest,
    read_sidecar,
    shard_is_complete,
    shard_path,
    temp_files_for,
    write_shard,
)
from ctpipe.errors import UserError
from ctpipe.ops.geometry import ParallelBeamGeometry
from ctpipe.runlock import one_run_per_prep_task
from ctpipe.progress import track

PARTS = ("train", "validation", "test")
DATA_KEY = "data"
PHOTONS_PER_PIXEL = 4096
_FILE_RE = re.compile(r"^(observation|ground_truth)_(train|validation|test)_(\d{3})\.hdf5$")
_ZIP_HINT = "re-download/re-extract it from the LoDoPaB-CT archive (Zenodo record 3384092)"


class LoDoPaBError(UserError, ValueError):
    """The raw LoDoPaB folder does not match the expected layout (the message names the file and the fix)."""


@dataclass(frozen=True)
class RawPair:
    """One observation/ground-truth file pair and the shard it becomes."""

    part: str
    file_index: int
    observation: Path
    ground_truth: Path
    n_samples: int
    shard_index: int
    patient_ids: tuple[str, ...]

    @property
    def sample_ids(self) -> list[str]:
        return [f"{self.part}-{self.file_index:03d}-{row:03d}" for row in range(self.n_samples)]

    @property
    def source_files(self) -> tuple[str, str]:
        return (self.observation.name, self.ground_truth.name)


@dataclass(frozen=True)
class RawLayout:
    """The validated metadata of a raw LoDoPaB folder (no sample data read yet)."""

    src: Path
    parts: tuple[str, ...]
    pairs: tuple[RawPair, ...]
    geometry: ParallelBeamGeometry
    patient_id_source: dict[str, str]

    def splits(self) -> dict[str, list[str]]:
        return {part: sorted({p for pair in self.pairs if pair.part == part for p in pair.patient_ids})
                for part in self.parts}


@dataclass(frozen=True)
class PrepResult:
    """What one prep task did: shard indices written and skipped, and the manifest if it wrote it."""

    out: Path
    written: tuple[int, ...]
    skipped: tuple[int, ...]
    n_shards: int
    manifest: Path | None


# ---- geometry -----------------------------------------------------------------------------------------------
def infer_geometry(sinogram_shape: Sequence[int], image_shape: Sequence[int], where: str) -> ParallelBeamGeometry:
    """``lodopab()`` for (1000, 513) + (362, 362); otherwise ``lodopab().scaled(N, A)`` if its bins match."""
    n_angles, n_detector = (int(s) for s in sinogram_shape)
    n_pixels = int(image_shape[0])
    if int(image_shape[1]) != n_pixels:
        raise LoDoPaBError(f"{where}: ground-truth images must be square, got {tuple(image_shape)}")
    geometry = ParallelBeamGeometry.lodopab().scaled(n_pixels, n_angles)
    if geometry.n_detector != n_detector:
        raise LoDoPaBError(
            f"{where}: observations have {n_detector} detector bins but a LoDoPaB-type geometry with "
            f"{n_pixels}^2 pixels has {geometry.n_detector}; only lodopab() (1000 x 513 with 362^2) and "
            "lodopab().scaled(n_pixels, n_angles) are supported")
    return geometry


# ---- metadata inspection ------------------------------------------------------------------------------------
def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise LoDoPaBError(f"{path}: cannot read this HDF5 file ({error}); it is truncated or corrupt: {_ZIP_HINT}") from error


def _data_shape(path: Path) -> tuple[int, ...]:
    with _open(path) as handle:
        if DATA_KEY not in handle or not isinstance(handle[DATA_KEY], h5py.Dataset):
            raise LoDoPaBError(f"{path}: expected a dataset 'data' (LoDoPaB layout), found keys {sorted(handle.keys())}; "
                               f"{_ZIP_HINT}")
        dataset = handle[DATA_KEY]
        if dataset.ndim != 3 or not np.issubdtype(dataset.dtype, np.floating):
            raise LoDoPaBError(f"{path}: 'data' must be a 3D float array (n, ., .), got shape {dataset.shape} "
                               f"dtype {dataset.dtype}; {_ZIP_HINT}")
        return tuple(int(s) for s in dataset.shape)


def _list_part(src: Path, part: str) -> list[int]:
    """Sorted file indices of ``part``; refuses an observation without its ground truth and vice versa."""
    found: dict[str, set[int]] = {"observation": set(), "ground_truth": set()}
    for path in src.iterdir():
        match = _FILE_RE.match(path.name)
        if match and match.group(2) == part:
            found[match.group(1)].add(int(match.group(3)))
    if not found["observation"] and not found["ground_truth"]:
        raise LoDoPaBError(f"{src}: no LoDoPaB files for part {part!r} (expected {src / f'observation_{part}_000.hdf5'} "
                           f"and ground_truth_{part}_000.hdf5, ...); extract observation_{part}.zip and "
                           f"ground_truth_{part}.zip there, or leave {part!r} out of parts")
    for kind, other in (("observation", "ground_truth"), ("ground_truth", "observation")):
        orphans = sorted(found[kind] - found[other])
        if orphans:
            name = f"{kind}_{part}_{orphans[0]:03d}.hdf5"
            raise LoDoPaBError(f"{src / name}: has no partner {other}_{part}_{orphans[0]:03d}.hdf5 in {src}; "
                               f"extract the missing file from {other}_{part}.zip")
    indices = sorted(found["observation"])
    gaps = sorted(set(range(len(indices))) - set(indices))
    if gaps:
        raise LoDoPaBError(f"{src}: part {part!r} lacks the file pair number {gaps[0]:03d} (found {len(indices)} pairs "
                           f"numbered up to {indices[-1]:03d}); the extraction is incomplete: {_ZIP_HINT}")
    return indices


def _pair_shapes(src: Path, part: str, index: int) -> tuple[int, tuple[int, int], tuple[int, int]]:
    obs_path, gt_path = src / f"observation_{part}_{index:03d}.hdf5", src / f"ground_truth_{part}_{index:03d}.hdf5"
    obs, gt = _data_shape(obs_path), _data_shape(gt_path)
    if obs[0] != gt[0]:
        raise LoDoPaBError(f"{obs_path}: holds {obs[0]} samples but its partner {gt_path.name} holds {gt[0]}; "
                           f"the pair must match sample for sample: {_ZIP_HINT}")
    if obs[0] == 0:
        raise LoDoPaBError(f"{obs_path}: holds no samples; {_ZIP_HINT}")
    return obs[0], (obs[1], obs[2]), (gt[1], gt[2])


def _read_patient_csv(path: Path, expected: int) -> list[int]:
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != expected:
        raise LoDoPaBError(f"{path}: has {len(lines)} lines but the part has {expected} samples; it must hold one "
                           "integer patient id per sample, in file order (re-download it, or delete it to use one "
                           "pseudo-patient per raw file)")
    try:
        return [int(line.strip()) for line in lines]
    except ValueError as error:
        raise LoDoPaBError(f"{path}: every line must be one integer patient id ({error}); re-download it") from error


def _part_patient_ids(src: Path, part: str, counts: list[int]) -> tuple[list[tuple[str, ...]], str]:
    csv = src / f"patient_ids_rand_{part}.csv"
    if not csv.is_file():
        return [tuple([f"{part}-file{i:03d}"] * n) for i, n in enumerate(counts)], "one pseudo-patient per raw file"
    ids = [f"{part}-{value:04d}" for value in _read_patient_csv(csv, sum(counts))]
    starts = np.cumsum([0] + counts)
    return [tuple(ids[starts[i]:starts[i + 1]]) for i in range(len(counts))], f"csv {csv.name}"


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(parts, str):
        parts = [parts]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise LoDoPaBError(f"parts must be distinct names from {PARTS}, got {list(parts)}")
    return tuple(p for p in PARTS if p in parts)


def inspect_lodopab(src: str | os.PathLike[str], parts: Sequence[str] = PARTS) -> RawLayout:
    """Validate the layout and metadata of every raw file (names, partners, keys, shapes, CSVs); read no data."""
    src = Path(src)
    parts = _check_parts(parts)
    if not src.is_dir():
        raise LoDoPaBError(f"LoDoPaB source folder {src} does not exist; download LoDoPaB-CT (Zenodo 3384092) and "
                           "unzip it there, or write synthetic data with write_synthetic_lodopab")
    pairs: list[RawPair] = []
    shapes: tuple[tuple[int, int], tuple[int, int], Path] | None = None
    sources: dict[str, str] = {}
    for part in parts:
        indices = _list_part(src, part)
        counts = []
        for index in indices:
            n, obs_shape, gt_shape = _pair_shapes(src, part, index)
            if shapes is None:
                shapes = (obs_shape, gt_shape, src / f"observation_{part}_{index:03d}.hdf5")
            elif (obs_shape, gt_shape) != shapes[:2]:
                kind = "observation" if obs_shape != shapes[0] else "ground_truth"
                raise LoDoPaBError(f"{src / f'{kind}_{part}_{index:03d}.hdf5'}: samples of shape "
                                   f"{obs_shape if kind == 'observation' else gt_shape}, but the first pair "
                                   f"({shapes[2].name}) has observations {shapes[0]} and images {shapes[1]}; "
                                   f"all files must share one geometry: {_ZIP_HINT}")
            counts.append(n)
        patient_ids, sources[part] = _part_patient_ids(src, part, counts)
        for index, n, ids in zip(indices, counts, patient_ids):
            pairs.append(RawPair(part, index, src / f"observation_{part}_{index:03d}.hdf5",
                                 src / f"ground_truth_{part}_{index:03d}.hdf5", n, len(pairs), ids))
    assert shapes is not None
    geometry = infer_geometry(shapes[0], shapes[1], str(shapes[2]))
    return RawLayout(src=src, parts=parts, pairs=tuple(pairs), geometry=geometry, patient_id_source=sources)


# ---- data ------------------------------------------------------------------------------------------------------
def _read_checked(path: Path) -> np.ndarray:
    with _open(path) as handle:
        try:
            data = np.asarray(handle[DATA_KEY][...], dtype=np.float32)
        except OSError as error:
            raise LoDoPaBError(f"{path}: reading 'data' failed ({error}); the file is corrupt: {_ZIP_HINT}") from error
    bad = ~np.isfinite(data.reshape(data.shape[0], -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise LoDoPaBError(f"{path}: sample index {rows[0]} holds NaN/Inf values ({rows.size} bad samples in this file); "
                           f"{_ZIP_HINT}")
    return data


GT_RANGE = (0.0, 1.0)  # LoDoPaB ground truth is mu/mu_max clipped to [0, 1]
_GT_TOLERANCE = 1e-4


def check_ground_truth_range(data: np.ndarray, path: Path) -> None:
    """Refuse ground truth outside [0, 1] (e.g. HU, or attenuation not divided by mu_max), naming the sample."""
    low, high = GT_RANGE
    flat = data.reshape(data.shape[0], -1)
    lows, highs = flat.min(axis=1), flat.max(axis=1)
    bad = np.flatnonzero((lows < low - _GT_TOLERANCE) | (highs > high + _GT_TOLERANCE))
    if bad.size:
        raise LoDoPaBError(
            f"{path}: ground truth of sample index {bad[0]} spans [{lows[bad[0]]:.4g}, {highs[bad[0]]:.4g}] "
            f"({bad.size} samples out of range in this file, whole file [{lows.min():.4g}, {highs.max():.4g}]); "
            f"LoDoPaB ground truth lies in [{low:g}, {high:g}] (mu/mu_max). Convert the images (HU -> mu/mu_max, "
            "clipped) or check that these are LoDoPaB ground_truth files")


def load_pair(pair: RawPair) -> dict[str, np.ndarray]:
    """Fully read and validate one raw pair: ``{"sinogram": (n, A, D), "image": (n, N, N)}`` float32."""
    image = _read_checked(pair.ground_truth)
    check_ground_truth_range(image, pair.ground_truth)
    return {"sinogram": _read_checked(pair.observation), "image": image}


def lodopab_fields(geometry: ParallelBeamGeometry) -> dict[str, FieldSpec]:
    return {
        "sinogram": FieldSpec(geometry.sinogram_shape, "float32", unit="m (line integral of mu/mu_max)",
                              description="LoDoPaB post-log observation -ln(N/N0)/mu_max, N0=4096"),
        "image": FieldSpec(geometry.image_shape, "float32", unit="mu/mu_max (mu_max = 81.35858 1/m)",
                           description="LoDoPaB ground truth, normalised attenuation in [0, 1]"),
    }


def _attrs(layout: RawLayout) -> dict[str, Any]:
    return {
        "dataset": "lodopab",
        "geometry": layout.geometry.to_dict(),
        "mu_max": MU_MAX,
        "photons_per_pixel": PHOTONS_PER_PIXEL,
        "parts": list(layout.parts),
        "patient_id_source": dict(layout.patient_id_source),
        "sample_id_format": "{part}-{file:03d}-{row:03d}",
        "split_rule": "split = LoDoPaB part",
    }


def _is_done(out: Path, pair: RawPair) -> bool:
    path = shard_path(out, pair.shard_index)
    info = read_sidecar(path)
    return (info is not None and info.n_samples == pair.n_samples and info.source_files == pair.source_files
            and shard_is_complete(path))


def _write_pair(out: Path, pair: RawPair, layout: RawLayout) -> None:
    data = load_pair(pair)  # validates everything before the shard is touched
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # the set is being changed: its manifest is stale
    write_shard(shard_path(out, pair.shard_index), lodopab_fields(layout.geometry), data, pair.sample_ids,
                list(pair.patient_ids), attrs={**_attrs(layout), "part": pair.part}, source_files=pair.source_files)


@one_run_per_prep_task
def prep_lodopab(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    parts: Sequence[str] = PARTS,
    task_index: int = 0,
    n_tasks: int = 1,
    progress: bool = True,
) -> PrepResult:
    """Convert raw LoDoPaB files in ``src`` into the shard set ``out`` (this array task's share).

    Idempotent and resumable: complete shards (checksum matches the sidecar, same sources) are skipped,
    incomplete or corrupt ones rewritten. The manifest is written by whichever task finds all shards done.
    """
    if not (isinstance(n_tasks, int) and n_tasks >= 1 and isinstance(task_index, int) and 0 <= task_index < n_tasks):
        raise ValueError(f"need 0 <= task_index < n_tasks, got task_index={task_index}, n_tasks={n_tasks}")
    layout = inspect_lodopab(src, parts)
    out = Path(out)
    claim_output(out, "lodopab", src, {"parts": list(layout.parts)})
    written, skipped = [], []
    own = [pair for pair in layout.pairs if pair.shard_index % n_tasks == task_index]
    for pair in track(own, f"LoDoPaB prep task {task_index}/{n_tasks}", "shards", mode=None if progress else "off"):
        for leftover in temp_files_for(shard_path(out, pair.shard_index)):
            leftover.unlink(missing_ok=True)
        if _is_done(out, pair):
            skipped.append(pair.shard_index)
            continue
        _write_pair(out, pair, layout)
        written.append(pair.shard_index)
    manifest = None
    others_done = all(shard_is_complete(shard_path(out, p.shard_index), verify_checksum=False)
                      for p in layout.pairs if p.shard_index % n_tasks != task_index)
    if others_done:  # own shards were verified above; others were verified by their own tasks
        manifest = finalize_manifest(out, layout.splits(), _attrs(layout), expected_shards=len(layout.pairs),
                                     verify_checksums=False)
    return PrepResult(out=out, written=tuple(written), skipped=tuple(skipped), n_shards=len(layout.pairs),
                      manifest=manifest)
