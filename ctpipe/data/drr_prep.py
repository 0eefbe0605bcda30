"""CT NIfTI files -> shard set of (dual-view DRR, target volume) pairs for X-ray -> CT training.

Per CT file (patient id = file name without ``.nii``/``.nii.gz``):

1. **Load** with nibabel and validate: readable, 3D (trailing singleton axes dropped), finite
   invertible affine, finite values, not constant. A failing file is skipped and listed, with the
   reason, in ``prep_report.csv``; it never stops the prep.
2. **Reorient** to canonical RAS (``nibabel.as_closest_canonical``: axis permutations/flips only; any
   residual obliquity is ignored) and read the voxel spacing from the canonical affine.
3. **Resample** (torch, trilinear; a box average first when shrinking by 2x or more along an axis) onto
   an isotropic cube of ``M^3`` voxels centred on the scan: the cube's edge is the scan's larger
   in-plane extent (``fov_mm``), so the z axis is centre-cropped or padded with air (-1024 HU).
   ``M = max(max(volume_sizes), min(xray_size, 256))``.
4. **Targets** ``volume_{size}``: the cube averaged (or trilinearly resampled) to ``size^3``, HU
   window :data:`ctpipe.intensity.XRAY2CT_HU_WINDOW` = ``[-1024, 1476]`` (X2CT-GAN's 0..2500 offset) mapped
   linearly onto ``[0, 1]`` and clipped (:func:`ctpipe.intensity.hu_to_unit_interval`).
   Axis order RAS (axis 0 toward patient Right, 1 Anterior, 2 Superior).
5. **X-rays** ``xray`` ``(2, xray_size, xray_size)`` = (frontal, lateral): :func:`render_drr` of
   :func:`hu_to_mu` of the cube, parallel beam by default (``cone_beam=True``: X2CT-GAN's 541/949 mm),
   detector fitted to the cube, mapped to ``1 - exp(-gain * p)``; orientation as in
   :mod:`ctpipe.ops.drr` (row 0 superior; frontal column 0 = patient's right; lateral column 0 =
   anterior).

Sharding: files are sorted; group ``g`` holds files ``g*F .. g*F+F-1`` (``F = files_per_shard``) and
array task ``i`` of ``n`` converts the groups ``g`` with ``g % n == i`` (with the default ``F = 1``:
files ``i, i+n, ...``). A group's files are all loaded and checked before its shard is written
(atomically, via :mod:`ctpipe.data.shards`) to ``groups/shard-GGGGG.h5``; then
``groups/report-GGGGG.csv`` records every file's outcome. A group whose report and checksum match its
files is skipped on a re-run (idempotent, resumable). The task that finds every group done
*publishes* the non-empty groups, in order, as the contiguous shards ``shard-00000.h5 ...`` (hard links,
or copies where links are impossible, each with its sidecar -- a group whose files were all bad leaves
no gap), merges the reports into ``prep_report.csv`` and writes the manifest with a patient-level
train / validation / test split (:func:`ctpipe.data.shards.patient_split`; ``split_fractions``, default
:data:`DEFAULT_SPLIT_FRACTIONS` = 0.8 / 0.1 / 0.1, recorded in the manifest as ``split_fractions``). The
test split is held out: training picks ``best.pt`` on validation, and every X-ray -> CT evaluation reports
both. Publishing is idempotent too.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ctpipe.atomic import atomic_path, atomic_write_json, atomic_write_text
from ctpipe.data.nifti_io import hu_range_problem, read_nifti
from ctpipe.data.shards import (
    MANIFEST_NAME,
    FieldSpec,
    ShardSetError,
    claim_output,
    finalize_manifest,
    patient_split,
    read_sidecar,
    shard_index,
    shard_is_complete,
    sha256_file,
    shard_path,
    sidecar_path,
    temp_files_for,
    write_shard,
)
from ctpipe.intensity import AIR_HU, XRAY2CT_HU_WINDOW, hu_to_unit_interval
from ctpipe.ops.drr import (
    DEFAULT_IMAGE_GAIN,
    MU_AIR_PER_MM,
    MU_WATER_PER_MM,
    VIEWS,
    DRRGeometry,
    drr_to_image,
    hu_to_mu,
    render_drr,
)
from ctpipe.ops.resize import resize_cube
from ctpipe.progress import track
from ctpipe.runlock import one_run_per_prep_task

MAX_WORKING_SIZE = 256
REPORT_NAME = "prep_report.csv"
GROUP_DIR = "groups"
GROUP_REPORT_COLUMNS = ("path", "patient_id", "status", "reason", "group")
REPORT_COLUMNS = (*GROUP_REPORT_COLUMNS, "shard")
SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, validation (chooses best.pt), test (held out)
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class BadInput(ValueError):
    """A CT file that cannot be used; the message is the reason written to the report."""


@dataclass(frozen=True)
class PrepResult:
    """What one prep task did (shard indices written / skipped as already done) and what it found."""

    out: Path
    written: tuple[int, ...]  # file groups converted by this task
    skipped: tuple[int, ...]  # file groups already done (idempotent re-run)
    n_groups: int
    n_shards: int | None  # published shards (None until every group is done)
    bad_files: tuple[tuple[str, str], ...]  # (path, reason) for this task's shards
    manifest: Path | None
    report: Path | None


@dataclass(frozen=True)
class CTVolume:
    """A validated CT in canonical RAS orientation: HU array and voxel spacing (mm) per axis."""

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]


# ---- names ----------------------------------------------------------------------------------------
def patient_id_of(path: str | os.PathLike[str]) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (``ct_0003.nii.gz`` -> ``ct_0003``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def list_ct_files(src: str | os.PathLike[str]) -> list[Path]:
    """Sorted NIfTI files in ``src``; refuses two files with the same patient id."""
    folder = Path(src)
    if not folder.is_dir():
        raise FileNotFoundError(f"CT source folder {folder} does not exist; pass the folder holding the .nii/.nii.gz files")
    files = sorted(p.resolve() for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .nii or .nii.gz files in {folder}")
    seen: dict[str, Path] = {}
    for path in files:
        pid = patient_id_of(path)
        if pid in seen:
            raise ValueError(f"two CT files give the patient id {pid!r}: {seen[pid]} and {path}; rename one")
        seen[pid] = path
    return files


# ---- loading -------------------------------------------------------------------------------------------
def _squeeze_to_3d(data_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(data_shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise BadInput(f"not a 3D volume: shape {tuple(data_shape)}")
    if min(shape) < 2:
        raise BadInput(f"not a 3D volume: shape {tuple(data_shape)} has an axis shorter than 2 voxels")
    return shape


def _check_affine(affine: np.ndarray) -> None:
    if affine is None or not np.all(np.isfinite(affine)):
        raise BadInput("affine is missing or not finite")
    linear = np.asarray(affine, dtype=float)[:3, :3]
    scale = np.abs(linear).max()
    if scale == 0 or abs(np.linalg.det(linear)) <= 1e-9 * scale**3:
        raise BadInput(f"affine is not invertible (det of the 3x3 part = {np.linalg.det(linear):.3g})")


def load_ct(path: str | os.PathLike[str]) -> CTVolume:
    """Load, validate and reorient one CT to canonical RAS. Raises :class:`BadInput` with the reason."""
    try:
        image = read_nifti(path)
        shape = image.shape
    except Exception as error:  # nibabel raises many types for broken files
        raise BadInput(f"unreadable: {type(error).__name__}: {error}") from error
    shape3 = _squeeze_to_3d(tuple(shape))
    _check_affine(image.affine)
    try:
        image = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32).reshape(shape3), image.affine)
        canonical = nib.as_closest_canonical(image)
        hu = np.ascontiguousarray(canonical.dataobj, dtype=np.float32)
    except BadInput:
        raise
    except Exception as error:
        raise BadInput(f"unreadable: {type(error).__name__}: {error}") from error
    if not np.all(np.isfinite(hu)):
        raise BadInput(f"{int(np.size(hu) - np.isfinite(hu).sum())} voxels are NaN or infinite")
    if float(hu.max()) == float(hu.min()):
        raise BadInput(f"all voxels have the same value ({float(hu.min())})")
    problem = hu_range_problem(float(hu.min()), float(hu.max()))
    if problem is not None:
        raise BadInput(problem)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(canonical.affine))
    return CTVolume(hu=hu, spacing_mm=spacing)  # type: ignore[arg-type]


# ---- resampling --------------------------------------------------------------------------------------
def working_size(volume_sizes: Sequence[int], xray_size: int) -> int:
    return max(max(volume_sizes), min(int(xray_size), MAX_WORKING_SIZE))


def cube_fov_mm(ct: CTVolume) -> float:
    """Edge of the cube: the larger in-plane (R-L, A-P) extent of the scan in mm."""
    return max(ct.hu.shape[0] * ct.spacing_mm[0], ct.hu.shape[1] * ct.spacing_mm[1])


def _axis_coordinates(n_src: int, spacing: float, pool: int, size: int, step_mm: float, device: torch.device) -> torch.Tensor:
    """grid_sample coordinates (align_corners=False) along one axis of the pooled source grid."""
    offsets = (torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0) * step_mm
    source_index = (n_src - 1) / 2.0 + offsets / spacing
    pooled_index = (source_index - (pool - 1) / 2.0) / pool
    n_pooled = n_src // pool
    return (2.0 * pooled_index + 1.0) / n_pooled - 1.0


def resample_to_cube(ct: CTVolume, size: int, fov_mm: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """HU on an isotropic ``size^3`` cube of edge ``fov_mm`` centred on the scan (RAS order; air outside)."""
    device = torch.device(device)
    step = fov_mm / size
    volume = torch.from_numpy(ct.hu).to(device=device, dtype=torch.float32)[None, None] - AIR_HU
    pools = tuple(max(1, min(int(math.floor(step / s)), n)) for s, n in zip(ct.spacing_mm, ct.hu.shape))
    if max(pools) > 1:  # box filter against aliasing before a >= 2x shrink
        volume = F.avg_pool3d(volume, kernel_size=pools, stride=pools)
    axes = [_axis_coordinates(n, s, p, size, step, device) for n, s, p in zip(ct.hu.shape, ct.spacing_mm, pools)]
    grid_r, grid_a, grid_s = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([grid_s, grid_a, grid_r], dim=-1).to(torch.float32)[None]  # (x, y, z) = (W, H, D)
    cube = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return cube[0, 0] + AIR_HU


def downsample_cube(cube: torch.Tensor, size: int) -> torch.Tensor:
    """A ``(n, n, n)`` cube at ``size^3`` (:func:`ctpipe.ops.resize.resize_cube`)."""
    return resize_cube(cube[None, None], size)[0, 0]


# ---- one CT -> one sample ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DRRPrepConfig:
    xray_size: int = 128                           # the stage-1 network's X-ray input
    volume_sizes: tuple[int, ...] = (64, 256)      # stage1_64's target and the 256^3 stages' target
    cone_beam: bool = False
    image_gain: float = DEFAULT_IMAGE_GAIN
    hu_window: tuple[float, float] = XRAY2CT_HU_WINDOW

    def __post_init__(self) -> None:
        if self.xray_size < 4 or not self.volume_sizes or min(self.volume_sizes) < 4:
            raise ValueError(f"DRRPrepConfig: xray_size and every volume size must be >= 4, got {self}")
        if len(set(self.volume_sizes)) != len(self.volume_sizes):
            raise ValueError(f"DRRPrepConfig: repeated volume size in {self.volume_sizes}")

    def geometry(self) -> DRRGeometry:
        if self.cone_beam:
            return DRRGeometry.cone_beam(detector_pixels=self.xray_size)
        return DRRGeometry.parallel(detector_pixels=self.xray_size)

    def fields(self) -> dict[str, FieldSpec]:
        low, high = self.hu_window
        specs = {
            "xray": FieldSpec((2, self.xray_size, self.xray_size), unit=f"1 - exp(-{self.image_gain} * line integral)",
                              description="DRRs (frontal AP, lateral); row 0 superior; frontal col 0 = patient right, "
                                          "lateral col 0 = anterior"),
            "fov_mm": FieldSpec((1,), unit="mm", description="edge length of the cube the volumes span"),
        }
        for size in self.volume_sizes:
            specs[f"volume_{size}"] = FieldSpec(
                (size, size, size), unit=f"(HU - {low}) / {high - low} clipped to [0, 1]",
                description="CT, RAS axis order (0: to patient right, 1: anterior, 2: superior)")
        return specs

    def attrs(self) -> dict[str, Any]:
        return {
            "kind": "xray2ct",
            "hu_window": list(self.hu_window),
            "volume_normalisation": "clip((HU - hu_window[0]) / (hu_window[1] - hu_window[0]), 0, 1)",
            "volume_axes": "RAS",
            "volume_sizes": list(self.volume_sizes),
            "xray_views": list(VIEWS),
            "xray_normalisation": "1 - exp(-image_gain * line_integral)",
            "image_gain": self.image_gain,
            "mu_water_per_mm": MU_WATER_PER_MM,
            "mu_air_per_mm": MU_AIR_PER_MM,
            "geometry": self.geometry().to_dict(),
            "patient_id_rule": "file name without .nii/.nii.gz",
        }


def ct_to_sample(ct: CTVolume, config: DRRPrepConfig, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """One validated CT -> ``{"xray": (2, n, n), "volume_{size}": (size,)*3, "fov_mm": (1,)}``."""
    fov = cube_fov_mm(ct)
    cube = resample_to_cube(ct, working_size(config.volume_sizes, config.xray_size), fov, device)
    spacing = fov / cube.shape[-1]
    mu = hu_to_mu(cube)[None, None]
    geometry = config.geometry()
    views = [drr_to_image(render_drr(mu, spacing, geometry, view), config.image_gain)[0, 0] for view in VIEWS]
    sample = {"xray": torch.stack(views).cpu().numpy(), "fov_mm": np.array([fov], dtype=np.float32)}
    for size in config.volume_sizes:
        sample[f"volume_{size}"] = hu_to_unit_interval(downsample_cube(cube, size), config.hu_window).cpu().numpy()
    return sample


# ---- reports ------------------------------------------------------------------------------------------
def _group_shard(out: Path, group: int) -> Path:
    return shard_path(out / GROUP_DIR, group)


def _group_report(out: Path, group: int) -> Path:
    return out / GROUP_DIR / f"report-{group:05d}.csv"


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _read_report(path: Path) -> list[dict[str, str]] | None:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return None


# ---- one group of files ----------------------------------------------------------------------------------
def _group_done(out: Path, group: int, files: Sequence[Path]) -> bool:
    rows = _read_report(_group_report(out, group))
    if rows is None or [r["path"] for r in rows] != [str(f) for f in files]:
        return False
    good = [r["path"] for r in rows if r["status"] == "ok"]
    path = _group_shard(out, group)
    if not good:
        return not path.exists()
    info = read_sidecar(path)
    return info is not None and list(info.source_files) == good and shard_is_complete(path)


def _process_group(out: Path, group: int, files: Sequence[Path], config: DRRPrepConfig,
                   device: torch.device | str) -> list[dict[str, Any]]:
    """Load and convert every file first; then write the group's shard (if any file is good) and report."""
    samples, rows = [], []
    for path in files:
        pid = patient_id_of(path)
        try:
            samples.append((path, pid, ct_to_sample(load_ct(path), config, device)))
            rows.append({"path": str(path), "patient_id": pid, "status": "ok", "reason": "", "group": group})
        except BadInput as error:
            rows.append({"path": str(path), "patient_id": pid, "status": "skipped", "reason": str(error), "group": group})
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # the set is changing: its manifest is stale
    target = _group_shard(out, group)
    if samples:
        write_shard(target, config.fields(), [s for _, _, s in samples], sample_ids=[p for _, p, _ in samples],
                    patient_ids=[p for _, p, _ in samples], attrs=config.attrs(),
                    source_files=[str(path) for path, _, _ in samples])
    else:
        target.unlink(missing_ok=True)
        sidecar_path(target).unlink(missing_ok=True)
    atomic_write_text(_group_report(out, group), _csv_text(rows, GROUP_REPORT_COLUMNS))
    return rows


# ---- finishing: publish the non-empty groups as shards 0..J-1 -------------------------------------------
def _split_fractions(split_fractions: Sequence[float]) -> dict[str, float]:
    """``{train, validation[, test]: fraction}``; refuses a wrong count, negative fractions or a sum other than 1."""
    if not 1 <= len(split_fractions) <= len(SPLIT_NAMES):
        raise ValueError(f"split_fractions needs 1 to {len(SPLIT_NAMES)} entries ({', '.join(SPLIT_NAMES)}), got "
                         f"{tuple(split_fractions)}; e.g. --split-fractions 0.8,0.1,0.1")
    fractions = {name: float(f) for name, f in zip(SPLIT_NAMES, split_fractions)}
    if any(not (0.0 <= f <= 1.0) for f in fractions.values()) or not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions {tuple(split_fractions)} must lie in [0, 1] and sum to 1 "
                         "(train,validation,test), e.g. --split-fractions 0.8,0.1,0.1")
    return fractions


def parse_split_fractions(text: str) -> tuple[float, ...]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)``, validated (the ``--split-fractions`` option)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--split-fractions {text!r}: give comma-separated numbers TRAIN,VAL[,TEST], "
                         "e.g. 0.8,0.1,0.1") from None
    _split_fractions(values)
    return values


def _publish(staged: Path, final: Path) -> None:
    """Make ``final`` a hard link (or copy) of ``staged`` with its own sidecar; no-op when already so."""
    info = read_sidecar(staged)
    if info is None:
        raise ShardSetError(f"{staged}: staged shard without a sidecar; re-run the prep task that owns it")
    current = read_sidecar(final)
    if current is not None and current.sha256 == info.sha256 and final.is_file() and (
        os.path.samefile(final, staged) or sha256_file(final) == info.sha256
    ):
        return
    sidecar_path(final).unlink(missing_ok=True)
    with atomic_path(final) as tmp:
        tmp.unlink()
        try:
            os.link(staged, tmp)  # no second copy of the data on file systems with hard links
        except OSError:
            shutil.copyfile(staged, tmp)
    atomic_write_json(sidecar_path(final), dataclasses.replace(info, file=final.name).to_dict())


def _remove_shards_from(out: Path, first_unused: int) -> None:
    for path in out.glob("shard-*.h5"):
        try:
            index = shard_index(path)
        except ShardSetError:
            continue
        if index >= first_unused:
            path.unlink()
            sidecar_path(path).unlink(missing_ok=True)


def _finish(out: Path, n_groups: int, config: DRRPrepConfig, split_fractions: Sequence[float]) -> tuple[Path, Path | None, int]:
    """Publish shards, write prep_report.csv and (if any CT was usable) the manifest."""
    rows = [row for g in range(n_groups) for row in (_read_report(_group_report(out, g)) or [])]
    non_empty = sorted({int(r["group"]) for r in rows if r["status"] == "ok"})
    final_index = {group: j for j, group in enumerate(non_empty)}
    for row in rows:
        row["shard"] = final_index[int(row["group"])] if row["status"] == "ok" else ""
    report, text = out / REPORT_NAME, _csv_text(rows, REPORT_COLUMNS)
    if not report.is_file() or report.read_text() != text:  # leave an identical report untouched
        atomic_write_text(report, text)
    for group, j in final_index.items():
        _publish(_group_shard(out, group), shard_path(out, j))
    _remove_shards_from(out, len(non_empty))
    good = sorted({r["patient_id"] for r in rows if r["status"] == "ok"})
    if not good:
        return report, None, 0
    splits = patient_split(good, _split_fractions(split_fractions))
    attrs = {**config.attrs(), "split_rule": f"patient_split (sha256 of patient id), fractions {list(split_fractions)}",
             "split_fractions": dict(zip(SPLIT_NAMES, (float(f) for f in split_fractions)))}
    manifest = finalize_manifest(out, splits, attrs, expected_shards=len(non_empty), verify_checksums=False)
    return report, manifest, len(non_empty)


@one_run_per_prep_task
def prep_drr(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    xray_size: int = DRRPrepConfig.xray_size,
    volume_sizes: Sequence[int] = DRRPrepConfig.volume_sizes,
    task_index: int = 0,
    n_tasks: int = 1,
    cone_beam: bool = False,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    files_per_shard: int = 1,
    device: torch.device | str = "cpu",
) -> PrepResult:
    """Convert the NIfTI CTs in ``src`` into the shard set ``out`` (this array task's share).

    Idempotent and resumable (finished groups are skipped); bad files are listed in
    ``out/prep_report.csv``; the task that finds every group done publishes the shards and writes the
    report and the manifest.
    """
    if not (isinstance(n_tasks, int) and n_tasks >= 1 and isinstance(task_index, int) and 0 <= task_index < n_tasks):
        raise ValueError(f"prep_drr: need 0 <= task_index < n_tasks, got task_index={task_index}, n_tasks={n_tasks}")
    if files_per_shard < 1:
        raise ValueError(f"prep_drr: files_per_shard must be >= 1, got {files_per_shard}")
    config = DRRPrepConfig(xray_size=int(xray_size), volume_sizes=tuple(int(s) for s in volume_sizes), cone_beam=cone_beam)
    _split_fractions(split_fractions)
    files = list_ct_files(src)
    out = Path(out)
    claim_output(out, "xray2ct", src, {**dataclasses.asdict(config), "files_per_shard": files_per_shard,
                                       "split_fractions": [float(f) for f in split_fractions]})
    (out / GROUP_DIR).mkdir(parents=True, exist_ok=True)
    groups = [files[k : k + files_per_shard] for k in range(0, len(files), files_per_shard)]
    written, skipped, bad = [], [], []
    for group in track(range(task_index, len(groups), n_tasks), f"DRR prep task {task_index}/{n_tasks}", "groups"):
        for leftover in temp_files_for(_group_shard(out, group)):
            leftover.unlink(missing_ok=True)
        if _group_done(out, group, groups[group]):
            skipped.append(group)
            rows = _read_report(_group_report(out, group)) or []
        else:
            rows = _process_group(out, group, groups[group], config, device)
            written.append(group)
        bad += [(str(r["path"]), str(r["reason"])) for r in rows if r["status"] != "ok"]
    manifest = report = None
    n_shards = None
    if all(_group_report(out, g).is_file() for g in range(len(groups))):
        report, manifest, n_shards = _finish(out, len(groups), config, split_fractions)
    return PrepResult(out=out, written=tuple(written), skipped=tuple(skipped), n_groups=len(groups),
                      n_shards=n_shards, bad_files=tuple(bad), manifest=manifest, report=report)
