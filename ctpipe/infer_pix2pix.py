"""Apply a trained pix2pix generator to whole NIfTI volumes (scored in HU by :mod:`ctpipe.volume_scores`).

:func:`infer_volume` undoes exactly what :func:`ctpipe.data.nifti_pairs.prep_nifti_pairs` did, in
reverse: canonical (RAS+) axial slices -> HU window -> [-1, 1] -> resize to ``size`` -> generator ->
resize back to the native in-plane shape -> HU -> original storage orientation -> NIfTI written
atomically with the INPUT's affine and header (data type float32).

With target volumes, :func:`infer_folder` scores every prediction and the identity baseline with
:func:`ctpipe.volume_scores.evaluate_volume`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ctpipe.atomic import atomic_write_frame
from ctpipe.data.nifti_pairs import (VolumeError, canonical_slices, from_canonical, iter_volume_paths, load_volume,
                                    nifti_stem, resize_slices, save_nifti_like, unusable_entries, volume_hu_problem)
from ctpipe.errors import UserError
from ctpipe.intensity import PIX2PIX_HU_WINDOW, hu_to_symmetric_unit, symmetric_unit_to_hu
from ctpipe.progress import track
from ctpipe.volume_scores import evaluate_volume

__all__ = ["FolderResult", "OverwriteRefusedError", "describe", "evaluate_volume", "infer_folder", "infer_volume",
           "predict_slices", "refuse_overwrite"]


class OverwriteRefusedError(UserError):
    """An output path that would replace an input."""


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def refuse_overwrite(out: str | os.PathLike[str], inputs: dict[str, str | os.PathLike[str] | None]) -> None:
    """Refuse an output (file or folder) that is one of ``inputs`` (``{option: path}``), links included."""
    out = Path(out)
    for option, given in inputs.items():
        if given is not None and _same_path(out, Path(given)):
            raise OverwriteRefusedError(f"the output {out} is the same as {option} {given}: it would overwrite "
                                        "the input; write the predictions somewhere else")


@torch.no_grad()
def predict_slices(generator: nn.Module, slices_hu: np.ndarray, window: Sequence[float], size: int | None,
                   device: torch.device | str, batch_size: int = 8) -> np.ndarray:
    """``(D, X, Y)`` HU slices -> ``(D, X, Y)`` predicted HU slices (generator in eval mode)."""
    device = torch.device(device)
    native = slices_hu.shape[1:]
    out = np.empty(slices_hu.shape, dtype=np.float32)
    for start in range(0, slices_hu.shape[0], batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(slices_hu[start:start + batch_size], dtype=np.float32))
        x = hu_to_symmetric_unit(chunk, window)
        if size is not None:
            x = resize_slices(x, (size, size))
        y = generator(x[:, None].to(device))[:, 0].float().cpu()
        y = resize_slices(y, native)
        out[start:start + batch_size] = symmetric_unit_to_hu(y, window).numpy()
    return out


def infer_volume(generator: nn.Module, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                 window: Sequence[float] = PIX2PIX_HU_WINDOW, size: int | None = 512,
                 device: torch.device | str = "cpu", batch_size: int = 8) -> Path:
    """Predict ``out_path`` (HU, float32 NIfTI, the input's affine/header/shape) from ``in_path``.

    ``window`` and ``size`` must be the prep's (:func:`ctpipe.data.nifti_pairs.prep_settings` reads them
    from a manifest). The generator is switched to eval mode (BatchNorm running stats, no dropout) and
    restored to its previous mode afterwards.
    """
    refuse_overwrite(out_path, {"the input": in_path})
    try:
        volume = load_volume(in_path)
    except VolumeError as error:
        raise VolumeError(f"{in_path}: {error}") from error
    problem = volume_hu_problem(volume)
    if problem is not None:
        raise VolumeError(f"{in_path}: {problem}")
    slices = canonical_slices(volume.data, volume.affine)
    was_training = generator.training
    generator.eval()
    try:
        predicted = predict_slices(generator, slices, window, size, device, batch_size)
    finally:
        generator.train(was_training)
    canonical = np.moveaxis(predicted, 0, 2)
    data = from_canonical(canonical, volume.affine)
    if data.shape != volume.data.shape:  # pragma: no cover - a bug in the orientation round trip
        raise RuntimeError(f"{in_path}: prediction shape {data.shape} != input shape {volume.data.shape}")
    return save_nifti_like(data, volume, out_path)


@dataclasses.dataclass(frozen=True)
class FolderResult:
    outputs: tuple[Path, ...]
    metrics_csv: Path | None  # per-volume scores (model and identity baseline) when targets were given
    table: pd.DataFrame | None
    skipped: tuple[tuple[Path, str], ...] = ()  # (input, reason): unreadable inputs, or unusable targets
    skipped_csv: Path | None = None  # out_dir/skipped.csv, written when something was skipped


def _canonical_axial(path: Path) -> np.ndarray:
    volume = load_volume(path)
    return canonical_slices(volume.data, volume.affine)


def infer_folder(generator: nn.Module, in_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 window: Sequence[float] = PIX2PIX_HU_WINDOW, size: int | None = 512,
                 device: torch.device | str = "cpu", batch_size: int = 8,
                 target_dir: str | os.PathLike[str] | None = None) -> FolderResult:
    """:func:`infer_volume` for every NIfTI in ``in_dir`` (same names in ``out_dir``).

    With ``target_dir`` (e.g. ``SRC/testB``) every prediction with a same-named target is scored by
    :func:`evaluate_volume` (with the identity baseline); the table is written atomically to
    ``out_dir/metrics.csv`` (one row per volume).

    A file that cannot be read (truncated, NaN, not 3D, ...) does not stop the batch: it is skipped and
    listed with the reason in ``out_dir/skipped.csv`` (likewise a prediction whose target is unusable: its
    NIfTI is written, its metrics row is not). Raises only when no input at all could be predicted.
    """
    out_dir = Path(out_dir)
    refuse_overwrite(out_dir, {"the input folder": in_dir, "the target folder": target_dir})
    paths = list(iter_volume_paths(in_dir))
    if not paths:
        raise FileNotFoundError(f"no .nii/.nii.gz files in {in_dir}")
    outputs, rows, skipped = [], [], [(path, reason) for path, reason in unusable_entries(in_dir)]
    for path in track(paths, f"inference {Path(in_dir).name}", "volumes"):
        try:
            out_path = infer_volume(generator, path, out_dir / path.name, window, size, device, batch_size)
        except VolumeError as error:
            skipped.append((path, f"input: {error}"))
            continue
        outputs.append(out_path)
        target = _matching(target_dir, path) if target_dir is not None else None
        if target is not None:
            try:
                scores = evaluate_volume(_canonical_axial(out_path), _canonical_axial(target), window,
                                         input_hu=_canonical_axial(path))
            except ValueError as error:  # an unreadable target (VolumeError), or a grid that differs from the input
                skipped.append((path, f"target {target}: {error}"))
                continue
            rows.append({"patient_id": nifti_stem(path), "input": str(path), "target": str(target), **scores})
    skipped_csv = None
    if skipped:
        skipped_csv = atomic_write_frame(pd.DataFrame(skipped, columns=["input", "reason"]), out_dir / "skipped.csv")
    if not outputs:
        raise ValueError(f"no volume in {in_dir} could be read; see {skipped_csv}")
    if target_dir is None:
        return FolderResult(tuple(outputs), None, None, tuple(skipped), skipped_csv)
    table = pd.DataFrame(rows)
    return FolderResult(tuple(outputs), atomic_write_frame(table, out_dir / "metrics.csv"), table, tuple(skipped),
                        skipped_csv)


def _matching(target_dir: str | os.PathLike[str], path: Path) -> Path | None:
    stem = nifti_stem(path)
    for candidate in iter_volume_paths(target_dir):
        if nifti_stem(candidate) == stem:
            return candidate
    return None


def describe(result: FolderResult) -> dict[str, Any]:
    """Mean of every score column (for logs)."""
    if result.table is None or result.table.empty:
        return {}
    numeric = result.table.select_dtypes("number")
    return {column: float(numeric[column].mean()) for column in numeric.columns}
