"""Apply a trained pix2pix generator to whole NIfTI volumes, and score volumes in HU.

:func:`infer_volume` undoes exactly what :func:`ctpipe.data.nifti_pairs.prep_nifti_pairs` did, in
reverse: canonical (RAS+) axial slices -> HU window -> [-1, 1] -> resize to ``size`` -> generator ->
resize back to the native in-plane shape -> HU -> original storage orientation -> NIfTI written
atomically with the INPUT's affine and header (data type float32).

:func:`evaluate_volume` gives PSNR / SSIM (mean of 2D SSIM over axial slices) / MAE in HU (on the
clipped window, shifted to start at 0) and normalised to [0, 1], with the data range in every key (see
:mod:`ctpipe.metrics`). PSNR and SSIM are the same number in both units (the range scales with the
data); MAE differs by the factor hi - lo.
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

from ctpipe import metrics
from ctpipe.atomic import atomic_write_frame
from ctpipe.data.nifti_pairs import (VolumeError, canonical_slices, from_canonical, iter_volume_paths, load_volume,
                                    nifti_stem, resize_slices, save_nifti_like, unusable_entries, volume_hu_problem)
from ctpipe.errors import UserError
from ctpipe.intensity import PIX2PIX_HU_WINDOW, hu_to_symmetric_unit, symmetric_unit_to_hu
from ctpipe.progress import track


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

SSIM_CHUNK = 32  # slices per SSIM call (bounds memory for 512^2 x hundreds of slices)


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


def _keys(prefix: str, window: tuple[float, float]) -> dict[str, str]:
    width = window[1] - window[0]
    return {
        "psnr_hu": metrics.metric_column(f"{prefix}psnr_hu", width),
        "ssim_hu": metrics.metric_column(f"{prefix}ssim2d_hu", width),
        "mae_hu": f"{prefix}mae_hu",
        "psnr_norm": metrics.metric_column(f"{prefix}psnr_norm", 1.0),
        "ssim_norm": metrics.metric_column(f"{prefix}ssim2d_norm", 1.0),
        "mae_norm": f"{prefix}mae_norm",
    }


def _slicewise_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> float:
    """Mean 2D SSIM over the axial slices of ``(D, H, W)`` tensors, computed in chunks of slices."""
    total, count = 0.0, 0
    for start in range(0, pred.shape[0], SSIM_CHUNK):
        p, t = pred[start:start + SSIM_CHUNK, None], target[start:start + SSIM_CHUNK, None]
        values = metrics.ssim(p, t, data_range)
        total, count = total + float(values.sum()), count + int(values.numel())
    return total / count


def _scores(pred_hu: np.ndarray, target_hu: np.ndarray, window: tuple[float, float], prefix: str) -> dict[str, float]:
    keys = _keys(prefix, window)
    lo, hi = window
    # zero-based data: SSIM's luminance term depends on the zero point, so it is always computed on
    # data in [0, R] (HU - lo, or the [0, 1] normalisation), never on signed HU
    shifted = {name: torch.from_numpy(np.asarray(v, dtype=np.float64)).clamp(lo, hi) - lo
               for name, v in (("pred", pred_hu), ("target", target_hu))}
    out: dict[str, float] = {}
    for unit, scale in (("hu", 1.0), ("norm", 1.0 / (hi - lo))):
        p, t, rng = shifted["pred"] * scale, shifted["target"] * scale, (hi - lo) * scale
        out[keys[f"psnr_{unit}"]] = float(metrics.psnr(p[None, None], t[None, None], rng)[0])
        out[keys[f"ssim_{unit}"]] = _slicewise_ssim(p, t, rng)
        out[keys[f"mae_{unit}"]] = float(metrics.mae(p[None, None], t[None, None])[0])
    return out


def evaluate_volume(pred_hu: np.ndarray, target_hu: np.ndarray, window: Sequence[float] = PIX2PIX_HU_WINDOW,
                    input_hu: np.ndarray | None = None) -> dict[str, float]:
    """Scores of a predicted volume against the target, both ``(D, H, W)`` HU arrays, axial slices on axis 0.

    Both are clipped to ``window = (lo, hi)`` first (the range the network can represent), then:

    * ``psnr_hu[range=R]``, ``ssim2d_hu[range=R]`` (R = hi - lo, 4095 by default): on ``HU - lo`` in
      [0, R]; ``mae_hu``: mean |error| in HU.
    * ``psnr_norm[range=1]``, ``ssim2d_norm[range=1]``, ``mae_norm``: on ``(HU - lo) / R`` in [0, 1].

    PSNR and SSIM are therefore equal in both units (both are scale invariant once the range scales);
    ``mae_norm = mae_hu / R``. ``ssim2d`` is the mean 2D SSIM over axial slices (each slice >= 11^2).
    With ``input_hu`` the identity baseline (the input used as the prediction) is added as ``identity_*``.
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"evaluate_volume: window={tuple(window)} needs high > low")
    pred_hu, target_hu = np.asarray(pred_hu), np.asarray(target_hu)
    if pred_hu.shape != target_hu.shape or pred_hu.ndim != 3:
        raise ValueError(f"evaluate_volume: pred {pred_hu.shape} and target {target_hu.shape} must be equal (D, H, W)")
    out = _scores(pred_hu, target_hu, (lo, hi), "")
    if input_hu is not None:
        if np.shape(input_hu) != target_hu.shape:
            raise ValueError(f"evaluate_volume: input {np.shape(input_hu)} must match target {target_hu.shape}")
        out.update(_scores(np.asarray(input_hu), target_hu, (lo, hi), "identity_"))
    return out


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
