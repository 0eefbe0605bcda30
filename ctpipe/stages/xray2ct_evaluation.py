"""What the X-ray -> CT stages are scored against, and how: the baselines, the evaluation spec and its figure.

Baselines (:func:`with_baselines`) use the X-rays at most to pick a training patient: ``mean_volume`` predicts
the training split's voxel-wise mean volume for every input; ``nearest_xray`` predicts the volume of the
training patient whose X-rays (both views) are nearest in L2. :func:`xray_evaluation` scores them beside
every trained model on each grid the models are scored on, with the same metric code
(:func:`~ctpipe.stages.xray2ct_common.volume_metrics`), so a model's figure always stands next to what
ignoring (or merely matching) the X-rays scores on the same split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ctpipe.atomic import atomic_write_png, pyplot
from ctpipe.data.datasets import ShardDataset
from ctpipe.intensity import XRAY2CT_HU_WINDOW, unit_interval_to_hu
from ctpipe.stages.base import Evaluation, MetricFn, OncePerBatch, Predictor
from ctpipe.stages.xray2ct_common import XRAY_FIELD, XRayDataConfig, field_size, volume_metrics, xray_input


# ---- the evaluation spec and its figure ------------------------------------------------------------------------
def write_orthogonal_slices_png(pred: np.ndarray, target: np.ndarray, path: Path, title: str,
                                hu_window: Sequence[float] = XRAY2CT_HU_WINDOW) -> Path:
    """Middle sagittal / coronal / axial slices (RAS volumes) of target (top row) and prediction (bottom), in HU."""
    plt = pyplot()

    low, high = float(hu_window[0]), float(hu_window[1])
    fig, axes = plt.subplots(2, 3, figsize=(8.4, 5.8), squeeze=False)
    for row, (label, volume) in enumerate((("target", target), ("prediction", pred))):
        hu = unit_interval_to_hu(np.asarray(volume, dtype=np.float32), hu_window)
        c = [s // 2 for s in hu.shape]
        planes = (("sagittal (x=mid)", hu[c[0], :, :]), ("coronal (y=mid)", hu[:, c[1], :]), ("axial (z=mid)", hu[:, :, c[2]]))
        for col, (plane, image) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(image.T, cmap="gray", vmin=low, vmax=high, origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{label}: {plane}", fontsize=8)
    fig.suptitle(f"{title} (HU window [{low:g}, {high:g}], {pred.shape[0]}^3 voxels)", fontsize=9)
    return atomic_write_png(fig, path, 100)


def _slices_figure(cfg: Any, pred: np.ndarray, target: np.ndarray, path: Path, title: str) -> Path:
    return write_orthogonal_slices_png(pred, target, path, title, cfg.data.hu_window)


def _volume_metric(cfg: Any) -> MetricFn:
    return functools.partial(volume_metrics, hu_window=cfg.data.hu_window, literature=True)


def xray_evaluation(model_targets: Callable[[Any, Any], Mapping[str, str]],
                    own_field: Callable[[Any], str]) -> Evaluation[Any, Any]:
    """The X-ray -> CT evaluation: the models (``model_targets(cfg, task)`` = ``{model: target field}``) and the
    trivial baselines on every grid they are scored on, per volume by :func:`volume_metrics`, with the grid
    (``eval_size``) and the HU window in every row and ``<model>_slices.png`` of the first volume."""

    def targets(cfg: Any, task: Any) -> dict[str, str]:
        models = dict(model_targets(cfg, task))
        baselines = baseline_targets(list(dict.fromkeys(models.values())), own_field(cfg))
        return {**models, **{name: field for name, (_, field) in baselines.items()}}

    def columns(cfg: Any, task: Any) -> dict[str, dict[str, Any]]:
        low, high = (float(v) for v in cfg.data.hu_window)
        return {name: {"eval_size": field_size(cfg.data.root, field), "hu_window_low": low, "hu_window_high": high}
                for name, field in targets(cfg, task).items()}

    return Evaluation(target=lambda cfg, task, model: targets(cfg, task)[model], metric=_volume_metric,
                      columns=columns, figure=_slices_figure, n_examples=2)


# ---- baselines that use the X-rays at most to pick a training patient -------------------------------------
MEAN_VOLUME = "mean_volume"
NEAREST_XRAY = "nearest_xray"
TRIVIAL_BASELINES = (MEAN_VOLUME, NEAREST_XRAY)


def baseline_name(kind: str, field: str, own_field: str) -> str:
    """``mean_volume`` / ``nearest_xray`` on the stage's own grid, ``<kind>_<size>`` on another grid."""
    return kind if field == own_field else f"{kind}_{field.rsplit('_', 1)[-1]}"


@dataclass
class TrainingReference:
    """The training split as the baselines see it: its X-rays (flattened, ``(N, 2 n n)``), its mean volume per
    field, and the dataset, from which :func:`nearest_xray_volumes` reads the chosen patients' volumes."""

    dataset: Any
    xrays: Tensor
    means: dict[str, Tensor]


def training_reference(cfg: XRayDataConfig, fields: Sequence[str]) -> TrainingReference:
    """One pass over the training split: X-rays and the voxel-wise mean of every field in ``fields``."""
    dataset = ShardDataset(cfg.root, cfg.train_split, (XRAY_FIELD, *fields))
    if len(dataset) == 0:
        raise ValueError(f"shard set {cfg.root}: the training split {cfg.train_split!r} is empty; the baselines need it")
    xrays, sums = [], {field: torch.zeros(()) for field in fields}
    for index in range(len(dataset)):
        sample = dataset[index]
        xrays.append(sample[XRAY_FIELD].reshape(-1).float())
        for field in fields:
            sums[field] = sums[field] + sample[field].double()  # (1, s, s, s), float64 sum
    means = {field: (total / len(dataset)).float()[None] for field, total in sums.items()}  # (1, 1, s, s, s)
    return TrainingReference(dataset=dataset, xrays=torch.stack(xrays), means=means)


def training_arrays(cfg: XRayDataConfig, field: str) -> tuple[Tensor, Tensor]:
    """The training split's X-rays ``(N, 2, n, n)`` and ``field`` volumes ``(N, 1, s, s, s)`` (for LiftCT's bank)."""
    dataset = ShardDataset(cfg.root, cfg.train_split, (XRAY_FIELD, field))
    samples = [dataset[index] for index in range(len(dataset))]
    return torch.stack([s[XRAY_FIELD][0] for s in samples]), torch.stack([s[field] for s in samples])


def nearest_xray_indices(reference: TrainingReference, xray: Tensor) -> Tensor:
    """Per sample, the training index whose X-rays (both views) are nearest in L2 (first index on a tie)."""
    query = xray.detach().reshape(xray.shape[0], -1).float().to(reference.xrays.device)
    if query.shape[1] != reference.xrays.shape[1]:
        raise ValueError(f"nearest_xray: X-rays of {query.shape[1]} values vs {reference.xrays.shape[1]} in the training split")
    distances = (query[:, None, :] - reference.xrays[None, :, :]).pow(2).sum(dim=2)
    return distances.argmin(dim=1)


def nearest_xray_volumes(reference: TrainingReference, field: str, indices: Tensor) -> Tensor:
    """The ``field`` volumes of the training samples ``indices``, ``(B, 1, s, s, s)``."""
    return torch.stack([reference.dataset[int(i)][field] for i in indices])


def baseline_predictions(reference: TrainingReference, batch: Mapping[str, Any], fields: Mapping[str, str],
                         device: torch.device) -> dict[str, Tensor]:
    """``{baseline name: prediction}`` for ``fields`` = ``{name: (kind, field)}`` built by :func:`baseline_targets`."""
    xray = xray_input(batch)
    indices = nearest_xray_indices(reference, xray.cpu())
    batch_size = xray.shape[0]
    out: dict[str, Tensor] = {}
    for name, (kind, field) in fields.items():  # type: ignore[misc]
        if kind == MEAN_VOLUME:
            out[name] = reference.means[field].expand(batch_size, -1, -1, -1, -1).to(device)
        else:
            out[name] = nearest_xray_volumes(reference, field, indices).to(device)
    return out


def baseline_targets(fields: Sequence[str], own_field: str) -> dict[str, tuple[str, str]]:
    """``{baseline name: (kind, field)}``: mean_volume and nearest_xray on every evaluated grid."""
    return {baseline_name(kind, field, own_field): (kind, field) for field in fields for kind in TRIVIAL_BASELINES}


def with_baselines(models: Mapping[str, Predictor], targets: Mapping[str, str], cfg: XRayDataConfig, own_field: str,
                   device: torch.device) -> tuple[dict[str, Predictor], dict[str, str]]:
    """The models' predictors (clamped to the [0, 1] window) and ``mean_volume`` / ``nearest_xray`` on every
    grid the models are scored on, with every predictor's target field. The baselines of a batch are computed
    once (one nearest-patient search)."""
    fields = list(dict.fromkeys(targets.values()))
    reference = training_reference(cfg, fields)
    baselines = baseline_targets(fields, own_field)
    all_baselines = OncePerBatch(lambda batch: baseline_predictions(reference, batch, baselines, device))
    predictors: dict[str, Predictor] = {name: _clamped(predict) for name, predict in models.items()}
    for name in baselines:
        predictors[name] = functools.partial(_pick, all_baselines, name)
    return predictors, {**targets, **{name: field for name, (_, field) in baselines.items()}}


def _clamped(predict: Predictor) -> Predictor:
    return lambda batch: predict(batch).float().clamp(0.0, 1.0)


def _pick(predict_all: Callable[[Mapping[str, Any]], Mapping[str, Tensor]], name: str,
          batch: Mapping[str, Any]) -> Tensor:
    return predict_all(batch)[name]
