"""Paired NIfTI CT volumes (pix2pix layout) -> axial-slice shard sets.

Input layout (the users' folders)::

    SRC/trainA/patient_1.nii.gz    input: time-averaged CT (HU)
    SRC/trainB/patient_1.nii.gz    target: phase-0 CT (HU), same name, same grid
    SRC/testA/..., SRC/testB/...   optional held-out pairs (always the "test" split)

Output: a shard set (:mod:`ctpipe.data.shards`) with fields ``input`` and ``target`` (float32,
``(size, size)`` axial slices in [-1, 1]), one shard per usable volume, patient id = file stem,
patient-level splits. Each task first writes per-volume shards into ``out/volumes/shard-CCCCC.h5``
(CCCCC = the volume's index in the sorted candidate list, so tasks never collide and a re-run can
reuse them); finalising hard-links the usable ones, in candidate order, to the contiguous
``out/shard-00000.h5, ...`` (no copy; a copy where links are impossible) and writes, in ``out/``:

* ``prep_report.csv`` (file, status, reason): one row per skipped file, status ``skipped``, with the
  reason (unreadable / truncated / not NIfTI / non-finite / unmatched / shape or affine mismatch / 4D /
  duplicate file name or patient id); just the header when nothing was skipped.
* ``prep_volumes.csv`` (patient_id, split, input, target, n_slices, shard, axcodes, shape): one row per
  pair that was used.
* manifest attrs: the intensity mapping, orientation convention, resize, and per-volume provenance
  (source paths, original affine and shape, canonical affine and shape, slice indices, shard).

Geometry: every volume is reoriented to the closest canonical (RAS+) orientation with nibabel before
slicing -- axial slice ``k`` is ``canonical[:, :, k]`` (first axis towards Right, second towards
Anterior, ``k`` from inferior to superior) whatever the storage order, so a flipped affine gives the
same slices. Reorientation only permutes/flips axes (no resampling), so it is exactly invertible
(:func:`from_canonical`).

Intensity: :func:`ctpipe.intensity.hu_to_symmetric_unit` clips to the HU window (default
:data:`ctpipe.intensity.PIX2PIX_HU_WINDOW`) and maps it linearly onto [-1, 1] (the generator's Tanh range);
:func:`ctpipe.intensity.symmetric_unit_to_hu` is its inverse on the window.

Array jobs: task ``i`` of ``n`` handles candidates ``i, i + n, ...`` and writes only their shards and
its task record ``prep_tasks/task-IIIII-of-NNNNN.json``. The task that finds all ``n`` records present
(or :func:`finalize_nifti_pairs`) writes ``prep_report.csv`` and ``manifest.json``. Re-running reuses
volume shards whose checksum verifies and whose prep fingerprint (settings + source size/mtime) matches;
an unchanged re-run rewrites nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ctpipe.atomic import atomic_path, atomic_write_json, atomic_write_text
from ctpipe.data.nifti_io import hu_range_problem, read_nifti
from ctpipe.data.shards import (FieldSpec, ShardSetError, claim_output, finalize_manifest, patient_split,
                                read_shard_attrs, read_sidecar, shard_index, shard_is_complete, shard_name,
                                sidecar_path, temp_files_for, write_shard)
from ctpipe.errors import UserError
from ctpipe.intensity import PIX2PIX_HU_WINDOW, check_hu_window, hu_to_symmetric_unit
from ctpipe.progress import track
from ctpipe.runlock import RunLockedError, hold_run_lock, one_run_per_prep_task

log = logging.getLogger(__name__)

SUBSETS: tuple[tuple[str, str, str], ...] = (("train", "trainA", "trainB"), ("test", "testA", "testB"))
NIFTI_SUFFIXES = (".nii.gz", ".nii")
REPORT_NAME = "prep_report.csv"
TASKS_DIR = "prep_tasks"
VOLUMES_DIR = "volumes"
REPORT_COLUMNS = ("file", "status", "reason")
VOLUMES_NAME = "prep_volumes.csv"
VOLUMES_COLUMNS = ("patient_id", "split", "input", "target", "n_slices", "shard", "axcodes", "shape")
ORIENTATION = "RAS"
SLICE_CONVENTION = ("nibabel closest-canonical RAS+ array; slice k = canonical[:, :, k]; axis 0 towards R, "
                    "axis 1 towards A, k from inferior to superior")
KIND = "nifti_pairs"
FORMAT_VERSION = 1

class VolumeError(UserError, ValueError):
    """A NIfTI file that cannot be used (unreadable, truncated, wrong dimensionality, non-finite)."""


# ---- intensity -------------------------------------------------------------------------------------
def intensity_attrs(window: Sequence[float]) -> dict[str, Any]:
    lo, hi = check_hu_window(window)
    return {"unit": "HU", "window_hu": [lo, hi], "range": [-1.0, 1.0],
            "forward": "y = 2 * (clip(hu, lo, hi) - lo) / (hi - lo) - 1",
            "inverse": "hu = (clip(y, -1, 1) + 1) * (hi - lo) / 2 + lo"}


# ---- orientation -------------------------------------------------------------------------------------
def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the storage axes to the closest RAS+ axes."""
    return io_orientation(np.asarray(affine, dtype=float))


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(canonical array, canonical affine)``: the same voxels permuted/flipped to RAS+ (as
    ``nib.as_closest_canonical``)."""
    ornt = canonical_ornt(affine)
    canon = apply_orientation(data, ornt)
    return canon, np.asarray(affine, dtype=float) @ inv_ornt_aff(ornt, data.shape)


def from_canonical(canon: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical`: back to the storage order of a file with ``affine``."""
    back = ornt_transform(axcodes2ornt(ORIENTATION), canonical_ornt(affine))
    return apply_orientation(canon, back)


# ---- files -------------------------------------------------------------------------------------------
def nifti_stem(path: str | os.PathLike[str]) -> str | None:
    """``patient_1`` for ``patient_1.nii.gz`` / ``patient_1.nii``; ``None`` for other files."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


@dataclasses.dataclass(frozen=True)
class LoadedVolume:
    data: np.ndarray  # float32, storage order, HU
    affine: np.ndarray
    header: nib.Nifti1Header


def load_volume(path: str | os.PathLike[str]) -> LoadedVolume:
    """Read a 3D NIfTI (a 4D one with one volume is squeezed); raises :class:`VolumeError` with the cause.

    ``.nii.gz`` files are decompressed whole and their gzip checksum verified
    (:func:`ctpipe.data.nifti_io.read_nifti`), so a file missing only its last bytes is caught too.
    """
    path = Path(path)
    try:
        image = read_nifti(path)
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # nibabel raises many types for corrupt/truncated files
        raise VolumeError(f"unreadable or truncated NIfTI ({type(error).__name__}: {error})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"expected a 3D volume, got shape {data.shape}")
    if min(data.shape) < 1:
        raise VolumeError(f"empty volume, shape {data.shape}")
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise VolumeError(f"{bad} non-finite (NaN/Inf) voxels")
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"invalid affine {affine.tolist()}")
    header = image.header if isinstance(image.header, nib.Nifti1Header) else nib.Nifti1Header.from_header(image.header)
    return LoadedVolume(data=data, affine=affine, header=header)


def volume_hu_problem(volume: LoadedVolume) -> str | None:
    """Why ``volume`` is not a CT in Hounsfield units (see :func:`ctpipe.data.nifti_io.hu_range_problem`)."""
    return hu_range_problem(float(volume.data.min()), float(volume.data.max()))


def save_nifti_like(data: np.ndarray, reference: LoadedVolume, path: str | os.PathLike[str]) -> Path:
    """Write float32 ``data`` (storage order of ``reference``) with the reference's affine and header, atomically."""
    path = Path(path)
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(np.asarray(data, dtype=np.float32), reference.affine, header=header)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    return path


# ---- slices ------------------------------------------------------------------------------------------
def resize_slices(slices: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of ``(N, H, W)`` slices to ``shape``; float32 tensor.

    Antialiased bilinear weights are non-negative and sum to one, so values stay within the input range.
    """
    x = torch.as_tensor(slices, dtype=torch.float32)
    target = (int(shape[0]), int(shape[1]))
    if tuple(x.shape[-2:]) == target:
        return x
    return F.interpolate(x[:, None], size=target, mode="bilinear", align_corners=False, antialias=True)[:, 0]


def canonical_slices(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(D, X, Y)`` axial slices of the canonical volume (``canonical[:, :, k]`` for k = 0..D-1)."""
    canon, _ = to_canonical(data, affine)
    return np.ascontiguousarray(np.moveaxis(canon, 2, 0))


# ---- candidates ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PairCandidate:
    """One patient name found under a subset's A and/or B folder."""

    patient_id: str
    subset: str  # "train" | "test"
    input_path: Path | None
    target_path: Path | None
    duplicate_of: Path | None = None  # set on a second file of the same name in one folder (it is skipped)


def _nifti_files(folder: Path) -> dict[str, list[Path]]:
    """``{stem: [paths]}``: usually one path; ``x.nii.gz`` next to ``x.nii`` gives two (``.nii.gz`` first)."""
    if not folder.is_dir():
        return {}
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        stem = nifti_stem(path)
        if stem is not None and path.is_file():
            found.setdefault(stem, []).append(path)
    return {stem: sorted(paths, key=lambda p: not p.name.endswith(".nii.gz")) for stem, paths in found.items()}


def find_pairs(src: str | os.PathLike[str]) -> list[PairCandidate]:
    """All candidates, sorted by (subset order, patient id); unmatched files appear with one path ``None``.

    When a folder holds two files of one name (``x.nii.gz`` and ``x.nii``) the first is paired and each
    other one follows as a candidate with ``duplicate_of`` set, to be skipped and reported.
    """
    src = Path(src)
    out: list[PairCandidate] = []
    for subset, a_dir, b_dir in SUBSETS:
        a_files, b_files = _nifti_files(src / a_dir), _nifti_files(src / b_dir)
        for stem in sorted(set(a_files) | set(b_files)):
            a_paths, b_paths = a_files.get(stem, []), b_files.get(stem, [])
            out.append(PairCandidate(stem, subset, a_paths[0] if a_paths else None, b_paths[0] if b_paths else None))
            out += [PairCandidate(stem, subset, extra, None, duplicate_of=a_paths[0]) for extra in a_paths[1:]]
            out += [PairCandidate(stem, subset, None, extra, duplicate_of=b_paths[0]) for extra in b_paths[1:]]
    if not out:
        raise FileNotFoundError(f"no NIfTI files under {src}/trainA and {src}/trainB (or testA/testB): "
                                "expected SRC/trainA/<patient>.nii.gz with a same-named SRC/trainB file")
    return out


# ---- configuration and results ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PrepResult:
    out: Path
    manifest: Path | None  # None while other array tasks have not finished
    report: Path | None  # prep_report.csv (written with the manifest)
    task_index: int
    n_tasks: int
    n_volumes: int  # volumes this task prepared (written + reused)
    n_slices: int  # slices this task prepared
    written: tuple[str, ...]  # per-volume shards (``volumes/shard-CCCCC.h5``) written by this call
    reused: tuple[str, ...]  # per-volume shards already complete and up to date
    skipped: tuple[tuple[str, str], ...]  # (file, reason) for this task's skipped candidates


def _split_names(fractions: Sequence[float]) -> dict[str, float]:
    names = ("train", "validation", "test")
    if not 1 <= len(fractions) <= 3:
        raise ValueError(f"split_fractions={tuple(fractions)!r}: give 1-3 fractions for (train, validation, test)")
    return {names[i]: float(f) for i, f in enumerate(fractions)}


def _relative(path: Path | None, src: Path) -> str:
    if path is None:
        return ""
    try:
        return str(path.relative_to(src))
    except ValueError:
        return str(path)


def _file_signature(path: Path) -> list[int]:
    stat = path.stat()
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def _fingerprint(settings: Mapping[str, Any], cand: PairCandidate) -> str:
    assert cand.input_path is not None and cand.target_path is not None
    payload = {"settings": dict(settings), "input": _file_signature(cand.input_path),
               "target": _file_signature(cand.target_path)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ---- one pair --------------------------------------------------------------------------------------------
class PairSkipped(Exception):
    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def _load_pair(cand: PairCandidate, src: Path, affine_atol: float) -> tuple[LoadedVolume, LoadedVolume]:
    rel_a, rel_b = _relative(cand.input_path, src), _relative(cand.target_path, src)
    a_dir, b_dir = next((a, b) for s, a, b in SUBSETS if s == cand.subset)
    if cand.target_path is None:
        raise PairSkipped(rel_a, f"unmatched: no {b_dir}/{cand.patient_id}.nii[.gz] for this input")
    if cand.input_path is None:
        raise PairSkipped(rel_b, f"unmatched: no {a_dir}/{cand.patient_id}.nii[.gz] for this target")
    volumes = []
    for path, rel in ((cand.input_path, rel_a), (cand.target_path, rel_b)):
        try:
            volumes.append(load_volume(path))
        except VolumeError as error:
            raise PairSkipped(rel, str(error)) from error
    a, b = volumes
    if a.data.shape != b.data.shape:
        raise PairSkipped(rel_a, f"shape mismatch: {a_dir} {a.data.shape} vs {b_dir} {b.data.shape}")
    if not np.allclose(a.affine, b.affine, rtol=0.0, atol=affine_atol):
        diff = float(np.max(np.abs(a.affine - b.affine)))
        raise PairSkipped(rel_a, f"affine mismatch: max |difference| {diff:.4g} > {affine_atol} "
                                 f"between {a_dir} and {b_dir}")
    for volume, rel in ((a, rel_a), (b, rel_b)):
        problem = volume_hu_problem(volume)
        if problem is not None:
            raise PairSkipped(rel, problem)
    return a, b


def _slice_samples(a: LoadedVolume, b: LoadedVolume, window: tuple[float, float],
                   size: int | None) -> tuple[np.ndarray, np.ndarray]:
    slices = []
    for volume in (a, b):
        unit = hu_to_symmetric_unit(canonical_slices(volume.data, volume.affine).astype(np.float32), window)
        stack = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
        if size is not None:
            stack = resize_slices(stack, (size, size))
        slices.append(stack.numpy())
    return slices[0], slices[1]


def _provenance(cand: PairCandidate, src: Path, a: LoadedVolume, shard: str, size: int | None) -> dict[str, Any]:
    canon, canon_affine = to_canonical(a.data, a.affine)
    return {
        "patient_id": cand.patient_id,
        "subset": cand.subset,
        "input": _relative(cand.input_path, src),
        "target": _relative(cand.target_path, src),
        "affine": a.affine.tolist(),
        "shape": list(a.data.shape),
        "axcodes": "".join(nib.aff2axcodes(a.affine)),
        "canonical_affine": canon_affine.tolist(),
        "canonical_shape": list(canon.shape),
        "slice_indices": list(range(canon.shape[2])),
        "resized_from": list(canon.shape[:2]) if size is not None and tuple(canon.shape[:2]) != (size, size) else None,
        "volume_shard": shard,
    }


def _prepare_pair(cand: PairCandidate, index: int, src: Path, out: Path, settings: Mapping[str, Any],
                  window: tuple[float, float], size: int | None, affine_atol: float) -> tuple[dict[str, Any], bool]:
    """Write (or reuse) the shard of one good pair; returns (provenance, written?). Raises PairSkipped."""
    shard = out / VOLUMES_DIR / shard_name(index)
    if cand.input_path is not None and cand.target_path is not None and shard_is_complete(shard):
        try:
            attrs = read_shard_attrs(shard)
        except (OSError, KeyError, ValueError):
            attrs = {}
        if attrs.get("prep_fingerprint") == _fingerprint(settings, cand):
            return dict(attrs["provenance"]), False
    a, b = _load_pair(cand, src, affine_atol)
    inputs, targets = _slice_samples(a, b, window, size)
    provenance = _provenance(cand, src, a, f"{VOLUMES_DIR}/{shard.name}", size)
    side = inputs.shape[1:]
    unit = f"[-1, 1] <- HU window [{window[0]:g}, {window[1]:g}]"
    fields = {"input": FieldSpec(side, "float32", unit, "time-averaged CT axial slice (RAS canonical)"),
              "target": FieldSpec(side, "float32", unit, "phase-0 CT axial slice (RAS canonical)")}
    ids = [f"{cand.patient_id}/z{k:04d}" for k in provenance["slice_indices"]]
    samples = ({"input": inputs[k], "target": targets[k]} for k in range(len(ids)))
    attrs = {"kind": KIND, "prep_fingerprint": _fingerprint(settings, cand), "provenance": provenance,
             "intensity": intensity_attrs(window)}
    write_shard(shard, fields, samples, ids, [cand.patient_id] * len(ids), attrs=attrs,
                source_files=[provenance["input"], provenance["target"]])
    return provenance, True


# ---- the prep ------------------------------------------------------------------------------------------
def _duplicate_reasons(candidates: Sequence[PairCandidate], src: Path) -> dict[int, tuple[str, str]]:
    """Skip reasons by candidate index: a second file of one name in a folder, and a patient id in both train
    and test folders (it would leak: the test candidate is skipped)."""
    seen: dict[str, str] = {}
    out: dict[int, tuple[str, str]] = {}
    for i, cand in enumerate(candidates):
        path = cand.input_path or cand.target_path
        if cand.duplicate_of is not None:
            out[i] = (_relative(path, src), f"duplicate: {_relative(cand.duplicate_of, src)} has the same patient "
                                            "name and is the one used; remove or rename this file")
        elif cand.patient_id in seen and seen[cand.patient_id] != cand.subset:
            out[i] = (_relative(path, src), f"patient id {cand.patient_id!r} also in the {seen[cand.patient_id]} "
                                            "folders (would leak across splits); rename one of them")
        seen.setdefault(cand.patient_id, cand.subset)
    return out


def _settings(src: Path, size: int | None, window: tuple[float, float], fractions: Mapping[str, float],
              affine_atol: float, candidates: Sequence[PairCandidate]) -> dict[str, Any]:
    names = [[c.subset, c.patient_id, _relative(c.input_path, src), _relative(c.target_path, src)]
             for c in candidates]
    return {"format_version": FORMAT_VERSION, "src": str(src), "size": size, "window_hu": list(window),
            "split_fractions": dict(fractions), "affine_atol": affine_atol,
            "candidates_sha256": hashlib.sha256(json.dumps(names).encode()).hexdigest(),
            "n_candidates": len(candidates)}


def task_record_path(out: str | os.PathLike[str], task_index: int, n_tasks: int) -> Path:
    return Path(out) / TASKS_DIR / f"task-{task_index:05d}-of-{n_tasks:05d}.json"


@one_run_per_prep_task
def prep_nifti_pairs(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int | None = 512,
    hu_window: tuple[float, float] = PIX2PIX_HU_WINDOW,
    task_index: int = 0,
    n_tasks: int = 1,
    split_fractions: Sequence[float] = (0.8, 0.2),
    affine_atol: float = 1e-3,
) -> PrepResult:
    """Prepare this task's share of the pairs under ``src`` into the shard set ``out`` (see module doc).

    ``size``: resize every axial slice to ``size x size`` (``None`` keeps the native grid; then all
    volumes must share one in-plane shape). ``split_fractions``: (train, validation[, test]) fractions
    for the trainA/trainB patients, decided by a stable hash of the patient id; testA/testB patients
    always go to "test". ``affine_atol``: tolerance (mm) for the A/B affine agreement.
    Bad candidates are skipped and reported, never fatal. The manifest is written by the last task.
    """
    if n_tasks < 1 or not 0 <= task_index < n_tasks:
        raise ValueError(f"task_index={task_index}, n_tasks={n_tasks}: need 0 <= task_index < n_tasks")
    if size is not None and size < 1:
        raise ValueError(f"size={size}: give a positive slice side (e.g. 256 or 512) or None for native")
    src, out = Path(src).resolve(), Path(out)
    window = check_hu_window(hu_window)
    fractions = _split_names(split_fractions)
    try:  # fractions that do not sum to 1 are refused now, not after every volume was written
        patient_split([], fractions)
    except ShardSetError as error:
        raise ShardSetError(f"--split-fractions {','.join(f'{f:g}' for f in split_fractions)}: {error}; e.g. "
                            "0.8,0.2 or 0.7,0.15,0.15") from None
    candidates = find_pairs(src)
    settings = _settings(src, size, window, fractions, affine_atol, candidates)
    duplicates = _duplicate_reasons(candidates, src)
    claim_output(out, KIND, src, {"size": size, "window_hu": list(window), "split_fractions": dict(fractions),
                                  "affine_atol": affine_atol, "format_version": FORMAT_VERSION})
    task_record_path(out, task_index, n_tasks).unlink(missing_ok=True)  # present again only once this run ends
    rows, volumes, written, reused = [], [], [], []
    for leftover in temp_files_for(task_record_path(out, task_index, n_tasks)):  # of a killed earlier run
        leftover.unlink(missing_ok=True)
    if task_index == 0:  # what no candidate covers, reported once
        rows += [{"file": _relative(path, src), "status": "skipped", "reason": reason, "index": -1}
                 for _, a_dir, b_dir in SUBSETS for folder in (a_dir, b_dir)
                 for path, reason in unusable_entries(src / folder)]
    own = range(task_index, len(candidates), n_tasks)
    for index in track(own, f"NIfTI pairs prep task {task_index}/{n_tasks}", "pairs"):
        cand = candidates[index]
        for leftover in temp_files_for(out / VOLUMES_DIR / shard_name(index)):
            leftover.unlink(missing_ok=True)
        try:
            if index in duplicates:
                raise PairSkipped(*duplicates[index])
            provenance, was_written = _prepare_pair(cand, index, src, out, settings, window, size, affine_atol)
        except PairSkipped as skip:
            rows.append({"file": skip.file, "status": "skipped", "reason": skip.reason, "index": index})
            continue
        (written if was_written else reused).append(provenance["volume_shard"])
        volumes.append(provenance)
        rows.append({"file": provenance["input"], "status": "ok",
                     "reason": f"{len(provenance['slice_indices'])} slices -> {provenance['volume_shard']}",
                     "index": index})
    atomic_write_json(task_record_path(out, task_index, n_tasks),
                      {"settings": settings, "rows": rows, "volumes": volumes})
    manifest = report = None
    if all(task_record_path(out, t, n_tasks).is_file() for t in range(n_tasks)):
        try:
            with hold_run_lock(out, name=".prep-finalize.lock", what=f"the finalisation of {out}",
                               advice="let it finish"):
                _remove_final_temp_files(out)
                manifest, report = finalize_nifti_pairs(out, n_tasks)
        except RunLockedError as busy:  # two last tasks ending at once: the other one finalises
            log.info("%s", busy)
    skipped = tuple((r["file"], r["reason"]) for r in rows if r["status"] == "skipped")
    return PrepResult(out=out, manifest=manifest, report=report, task_index=task_index, n_tasks=n_tasks,
                      n_volumes=len(volumes), n_slices=sum(len(v["slice_indices"]) for v in volumes),
                      written=tuple(written), reused=tuple(reused), skipped=skipped)


def _remove_final_temp_files(out: Path) -> None:
    """Temporary files a killed finalisation left in ``out`` (final shards, sidecars, tables, manifest)."""
    for leftover in out.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def _read_task_records(out: Path, n_tasks: int) -> list[dict[str, Any]]:
    records = []
    for t in range(n_tasks):
        path = task_record_path(out, t, n_tasks)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: prep task {t} of {n_tasks} has not finished; run it first")
        records.append(json.loads(path.read_text()))
    settings = [r["settings"] for r in records]
    if any(s != settings[0] for s in settings[1:]):
        raise ValueError(f"{out / TASKS_DIR}: the task records come from runs with different settings or "
                         "inputs; re-run all tasks (or delete the stale records)")
    return records


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def _write_report(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``prep_report.csv``: one row per SKIPPED file (file, status, reason), in candidate order."""
    skipped = sorted((r for r in rows if r["status"] == "skipped"), key=lambda r: int(r["index"]))
    return _write_csv(path, skipped, REPORT_COLUMNS)


def _write_volume_table(path: Path, volumes: Sequence[Mapping[str, Any]], splits: Mapping[str, Sequence[str]]) -> Path:
    """``prep_volumes.csv``: one row per USED pair: its split, source files, slice count and shard."""
    split_of = {pid: split for split, ids in splits.items() for pid in ids}
    rows = [{**v, "split": split_of[v["patient_id"]], "n_slices": len(v["slice_indices"]),
             "shape": "x".join(str(n) for n in v["shape"])} for v in volumes]
    return _write_csv(path, rows, VOLUMES_COLUMNS)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy across file systems), atomically."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _publish_shards(out: Path, staged: Sequence[str]) -> None:
    """``out/<staged[j]>`` -> ``out/shard-{j}.h5`` with a sidecar naming it; other final shards are removed."""
    for j, name in enumerate(staged):
        source, target = out / name, out / shard_name(j)
        info = read_sidecar(source)
        if info is None or not shard_is_complete(source):
            raise FileNotFoundError(f"{source} is missing or incomplete; re-run the prep task that owns it")
        if not _same_file(source, target):
            sidecar_path(target).unlink(missing_ok=True)  # never vouch for a shard being replaced
            _link_or_copy(source, target)
        record = dataclasses.replace(info, file=target.name).to_dict()
        try:
            unchanged = json.loads(sidecar_path(target).read_text()) == record
        except (OSError, ValueError):
            unchanged = False
        if not unchanged:
            atomic_write_json(sidecar_path(target), record)
    for old in out.glob("shard-*.h5"):  # left from an earlier prep with more usable volumes
        try:
            index = shard_index(old)
        except ValueError:
            continue
        if index >= len(staged):
            sidecar_path(old).unlink(missing_ok=True)
            old.unlink()


def _remove_stale_volume_shards(out: Path, keep: set[str]) -> None:
    """Per-volume shards of candidates that are no longer usable (an earlier prep with other inputs)."""
    for shard in (out / VOLUMES_DIR).glob("shard-*.h5"):
        if f"{VOLUMES_DIR}/{shard.name}" not in keep:
            sidecar_path(shard).unlink(missing_ok=True)
            shard.unlink()


def finalize_nifti_pairs(out: str | os.PathLike[str], n_tasks: int = 1) -> tuple[Path, Path]:
    """Merge the ``n_tasks`` task records: write ``prep_report.csv``, the shard set, ``prep_volumes.csv`` and
    ``manifest.json``.

    Idempotent (an unchanged prep rewrites nothing). Returns ``(manifest path, report path)``. Raises if
    no pair at all was usable (the report is written first, so it says why).
    """
    out = Path(out)
    records = _read_task_records(out, n_tasks)
    settings = records[0]["settings"]
    rows = [row for r in records for row in r["rows"]]
    volumes = sorted((v for r in records for v in r["volumes"]), key=lambda v: v["volume_shard"])
    report = _write_report(out / REPORT_NAME, rows)
    if not volumes:
        raise ValueError(f"no usable pair under {settings['src']}: every candidate was skipped; see {report}")
    staged = [v["volume_shard"] for v in volumes]
    _remove_stale_volume_shards(out, set(staged))
    _publish_shards(out, staged)
    volumes = [{**v, "shard": shard_name(j)} for j, v in enumerate(volumes)]
    splits = _assign_splits(volumes, settings["split_fractions"])
    _write_volume_table(out / VOLUMES_NAME, volumes, splits)
    attrs = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "intensity": intensity_attrs(settings["window_hu"]),
        "orientation": {"canonical": ORIENTATION, "slices": SLICE_CONVENTION},
        "resize": ({"size": settings["size"], "method": "bilinear, antialiased when shrinking, align_corners=False"}
                   if settings["size"] is not None else None),
        "src": settings["src"],
        "split_rule": {"train_folders": dict(settings["split_fractions"]), "test_folders": "test",
                       "method": "ctpipe.data.shards.patient_split (SHA-256 of the patient id)"},
        "volumes": {v["patient_id"]: v for v in volumes},
    }
    manifest = finalize_manifest(out, splits, attrs=attrs, expected_shards=len(staged))
    return manifest, report


def _assign_splits(volumes: Sequence[Mapping[str, Any]], fractions: Mapping[str, float]) -> dict[str, list[str]]:
    train_folder = [v["patient_id"] for v in volumes if v["subset"] == "train"]
    splits = {name: list(ids) for name, ids in patient_split(train_folder, dict(fractions)).items()}
    test_folder = [v["patient_id"] for v in volumes if v["subset"] == "test"]
    if test_folder:
        splits["test"] = sorted(set(splits.get("test", [])) | set(test_folder))
    return splits


def prep_settings(manifest_attrs: Mapping[str, Any]) -> tuple[tuple[float, float], int | None]:
    """``(hu_window, size)`` recorded by :func:`prep_nifti_pairs` in a manifest's attrs (for inference)."""
    if manifest_attrs.get("kind") != KIND:
        raise ValueError(f"not a nifti_pairs shard set (attrs kind={manifest_attrs.get('kind')!r})")
    lo, hi = manifest_attrs["intensity"]["window_hu"]
    resize = manifest_attrs.get("resize")
    return (float(lo), float(hi)), (int(resize["size"]) if resize else None)


def unusable_entries(folder: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """Entries of ``folder`` that a NIfTI folder scan passes over, each with the reason (nothing is ignored
    silently): broken symbolic links, sub-folders, files without a .nii/.nii.gz name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() and not path.exists():
            out.append((path, f"broken symbolic link (to {os.readlink(path)})"))
        elif path.is_dir():
            out.append((path, "a folder (only files directly in the folder are read)"))
        elif not path.is_file():
            out.append((path, "not a regular file"))
        elif nifti_stem(path) is None:
            out.append((path, "not a NIfTI file name (.nii or .nii.gz)"))
    return out


def iter_volume_paths(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """NIfTI files (``.nii.gz`` / ``.nii``) directly in ``folder``, sorted by name."""
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and nifti_stem(path) is not None:
            yield path
