"""Pieces shared by the X-ray -> CT stages (``stage1_64``, ``refine_256``, ``direct_256``) and their inference.

Data: a shard set written by :func:`ctpipe.data.drr_prep.prep_drr` with fields ``xray`` ``(2, n, n)``
(frontal, lateral), ``volume_{s}`` ``(s, s, s)`` in [0, 1] (HU window ``hu_window`` mapped linearly onto
[0, 1] and clipped) and ``fov_mm``. :class:`ctpipe.data.datasets.ShardDataset` adds a leading channel axis
to every field, so a batch holds ``xray`` as ``(B, 1, 2, n, n)``: :func:`xray_input` squeezes that axis to
the ``(B, 2, n, n)`` the networks take. Volumes come out ``(B, 1, s, s, s)``, as the networks want.

Metrics (:func:`volume_metrics`): every prediction is clamped to [0, 1] (the window) and scored per volume
with the SAME code: 3D PSNR and true 3D SSIM with ``data_range=1`` (the [0, 1] window; columns
``psnr[range=1]``, ``ssim[range=1]``), MAE on [0, 1] (``mae``) and in HU (``mae_hu`` = MAE x window width).
The CSVs also carry the HU window (``hu_window_low``, ``hu_window_high``) and the grid edge the metric was
computed on (``eval_size``), so a 64^3 row can never be mistaken for a 256^3 one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ctpipe.atomic import atomic_path
from ctpipe.config import ConfigError
from ctpipe.intensity import XRAY2CT_HU_WINDOW
from ctpipe.metrics import (
    X2CT_PSNR_COLUMN,
    X2CT_SSIM_COLUMN,
    X2CT_SSIM_WINDOW,
    mae,
    metric_column,
    psnr,
    psnr_x2ct,
    ssim,
    ssim2d_x2ct,
)
from ctpipe.models.lift_ct import LIFT_CPU, LIFT_TINY, LiftCT, LiftCTConfig
from ctpipe.models.xray2ct import XRAY2CT_TINY, XRay2CT64, XRay2CTConfig
from ctpipe.progress import track
from ctpipe.stages.base import write_eval_tables, write_examples

log = logging.getLogger(__name__)

XRAY_FIELD = "xray"
FOV_FIELD = "fov_mm"
SPLITS = ("validation", "test")

STAGE1_PRESETS: dict[str, XRay2CTConfig] = {"default": XRay2CTConfig(), "tiny": XRAY2CT_TINY}
LIFT_PRESETS: dict[str, LiftCTConfig] = {"default": LiftCTConfig(), "cpu": LIFT_CPU, "tiny": LIFT_TINY}
# The stage-1 networks, by ``model.architecture`` (an explicit dict, no registry).
STAGE1_MODELS: dict[str, type[nn.Module]] = {"vit": XRay2CT64, "lift": LiftCT}
Stage1Network = XRay2CTConfig | LiftCTConfig


# ---- configuration ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XRayDataConfig:
    """Shard set and fields. ``volume_field`` is stage 1's grid, ``high_field`` the high-resolution target.

    ``high_field`` may be absent from the shard set for ``stage1_64`` (then no trilinear row is written);
    ``refine_256`` and ``direct_256`` need it. ``hu_window`` must equal the shard set's (checked)."""

    root: str = "data/xray2ct/shards"
    train_split: str = "train"
    val_split: str = "validation"
    test_split: str = "test"
    batch_size: int = 8                 # per GPU (per rank)
    eval_batch_size: int = 2
    num_workers: int = 4
    volume_field: str = "volume_64"
    high_field: str = "volume_256"
    hu_window: tuple[float, float] = XRAY2CT_HU_WINDOW


@dataclass(frozen=True)
class Stage1ModelConfig:
    """``architecture``: ``vit`` (the hybrid ViT :class:`XRay2CT64`) or ``lift`` (the geometry-aware
    :class:`ctpipe.models.lift_ct.LiftCT`). ``preset``: ``default`` (vit about 15M parameters), ``tiny``
    (tests), ``cpu`` (lift only: the CPU demo's 32^3 size) or ``custom`` (``network`` for vit,
    ``lift_network`` for lift)."""

    preset: Literal["default", "tiny", "cpu", "custom"] = "default"
    network: XRay2CTConfig | None = None
    architecture: Literal["vit", "lift"] = "vit"
    lift_network: LiftCTConfig | None = None


def resolve_stage1_network(model: Stage1ModelConfig, gradient_checkpointing: bool = False) -> Stage1Network:
    """The network config (XRay2CTConfig or LiftCTConfig) a stage-1 model config describes."""
    if model.architecture == "lift":
        return _resolve_lift_network(model, gradient_checkpointing)
    if model.lift_network is not None:
        raise ConfigError("model.lift_network is only used with model.architecture='lift'; remove it")
    if model.preset == "cpu":
        raise ConfigError("model.preset='cpu' exists for model.architecture='lift' only; use default, tiny or custom")
    network = _preset_or_custom(model.preset, model.network, STAGE1_PRESETS, "network", "XRay2CTConfig")
    return dataclasses.replace(network, gradient_checkpointing=gradient_checkpointing)


def _resolve_lift_network(model: Stage1ModelConfig, gradient_checkpointing: bool) -> LiftCTConfig:
    if model.network is not None:
        raise ConfigError("model.network holds ViT fields; with model.architecture='lift' use model.lift_network")
    network = _preset_or_custom(model.preset, model.lift_network, LIFT_PRESETS, "lift_network", "LiftCTConfig")
    return dataclasses.replace(network, gradient_checkpointing=gradient_checkpointing)


def _preset_or_custom(preset: str, custom: Any, presets: Mapping[str, Any], field: str, kind: str) -> Any:
    """``model.<field>`` for ``model.preset='custom'``, else the named preset; a stray ``model.<field>`` is refused."""
    if preset == "custom":
        if custom is None:
            raise ConfigError(f"model.preset='custom' needs model.{field} (the {kind} fields)")
        return custom
    if custom is not None:
        raise ConfigError(f"model.{field} is only used with model.preset='custom' (preset is {preset!r}); "
                          f"remove model.{field} or set model.preset=custom")
    return presets[preset]


def build_stage1_network(network: Stage1Network) -> nn.Module:
    """The stage-1 network for a resolved config (:data:`STAGE1_MODELS`)."""
    architecture = "lift" if isinstance(network, LiftCTConfig) else "vit"
    return STAGE1_MODELS[architecture](network)


# ---- data ------------------------------------------------------------------------------------------------
def field_size(root: str | Path, field: str) -> int:
    """Edge length of a cubic ``volume_*`` field or of the (square) ``xray`` field of a shard set."""
    from ctpipe.data.shards import read_manifest

    manifest = read_manifest(root)
    if field not in manifest.fields:
        raise KeyError(f"shard set {root} has no field {field!r} (it has {sorted(manifest.fields)}); re-run "
                       "`ctpipe prep drr` with the matching --volume-size, or change data.volume_field/high_field")
    return int(manifest.fields[field].shape[-1])


def has_field(root: str | Path, field: str) -> bool:
    from ctpipe.data.shards import read_manifest

    return field in read_manifest(root).fields


def check_shard_set(cfg: XRayDataConfig, xray_size: int) -> None:
    """The shard set's HU window and X-ray size must be what the config and model expect."""
    from ctpipe.data.shards import read_manifest

    manifest = read_manifest(cfg.root)
    window = tuple(float(v) for v in manifest.attrs.get("hu_window", XRAY2CT_HU_WINDOW))
    if window != tuple(cfg.hu_window):
        raise ConfigError(f"shard set {cfg.root} uses the HU window {window}, the config says data.hu_window="
                          f"{tuple(cfg.hu_window)}; set data.hu_window={list(window)}")
    have = field_size(cfg.root, XRAY_FIELD)
    if have != xray_size:
        raise ConfigError(f"shard set {cfg.root} holds {have}^2 X-rays, the network expects xray_size={xray_size}; "
                          "re-run `ctpipe prep drr --xray-size` or change the model")


def load_xray_splits(cfg: XRayDataConfig, fields: Sequence[str]) -> tuple[Any, Any, Any]:
    """Train / validation / test ShardDatasets of ``fields`` (validation/test None when empty)."""
    from ctpipe.data.datasets import ShardDataset
    from ctpipe.data.shards import read_manifest

    splits = read_manifest(cfg.root).splits

    def load(split: str) -> Any:
        return ShardDataset(cfg.root, split, tuple(fields)) if splits.get(split) else None

    train = load(cfg.train_split)
    if train is None:
        raise ValueError(f"shard set {cfg.root} has no samples in split {cfg.train_split!r}; splits: {sorted(splits)}")
    return train, load(cfg.val_split), load(cfg.test_split)


def xray_input(batch: Mapping[str, Any]) -> Tensor:
    """``(B, 1, 2, n, n)`` (ShardDataset's channel axis) -> ``(B, 2, n, n)``; 4D input passes unchanged."""
    xray = batch[XRAY_FIELD]
    if xray.dim() == 5 and xray.shape[1] == 1:
        return xray[:, 0]
    if xray.dim() == 4:
        return xray
    raise ValueError(f"expected X-rays (B, 1, 2, n, n) or (B, 2, n, n), got {tuple(xray.shape)}")


# ---- stage-1 network with optional multi-scale heads -----------------------------------------------------------
class Stage1Net(nn.Module):
    """:class:`XRay2CT64` (as ``net``) plus ``n_aux`` sigmoid heads on the last decoder stages before the output.

    ``forward`` returns ``{edge: (B, 1, s, s, s)}`` for every supervised scale; the final output equals
    ``net(xray)`` exactly. The checkpoint keys of the backbone are ``net.*`` (see :func:`stage1_state`)."""

    def __init__(self, config: Stage1Network, n_aux: int = 0) -> None:
        super().__init__()
        if isinstance(config, LiftCTConfig):
            if n_aux:
                raise ConfigError("the lift network has one output scale; set loss.scale_weights to one entry, e.g. [1.0]")
            self.net: nn.Module = LiftCT(config)
            self.aux = nn.ModuleList()
            return
        stages = len(config.decoder_channels)
        if not 0 <= n_aux < stages:
            raise ConfigError(f"stage1_64: {n_aux} auxiliary heads requested, the decoder has {stages} stages "
                              f"(at most {stages - 1}); shorten loss.scale_weights")
        self.net = XRay2CT64(config)
        self.aux = nn.ModuleList([nn.Conv3d(c, 1, 1) for c in config.decoder_channels[stages - 1 - n_aux : stages - 1]])

    def forward(self, xray: Tensor) -> dict[int, Tensor]:
        size = self.net.config.volume_size
        if not len(self.aux):
            return {size: self.net(xray)}
        decoder = self.net.decoder
        x = self.net.features(xray)
        first = len(decoder.stages) - 1 - len(self.aux)
        outputs: dict[int, Tensor] = {}
        for index, stage in enumerate(decoder.stages):
            x = stage(x)
            if first <= index < len(decoder.stages) - 1:
                outputs[x.shape[-1]] = torch.sigmoid(self.aux[index - first](x))
        outputs[size] = torch.sigmoid(decoder.head(x))
        return outputs


def stage1_state(models_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The :class:`XRay2CT64` state dict inside a Stage1Net state dict (``net.`` prefix removed)."""
    return {k[len("net."):]: v for k, v in models_state.items() if k.startswith("net.")}


def checkpoint_config(state: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    config = state.get("config")
    if not config:
        raise ValueError(f"checkpoint {path} records no config; it was not written by `ctpipe train`")
    return json.loads(config) if isinstance(config, str) else dict(config)


def load_stage1(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained stage-1 network (eval mode, frozen) and its run config, from a ``stage1_64`` checkpoint."""
    from ctpipe.checkpoint import load_checkpoint
    from ctpipe.config import from_dict

    state = load_checkpoint(path)
    config = checkpoint_config(state, path)
    if config.get("stage") != "stage1_64":
        raise ValueError(f"{path} is a {config.get('stage')!r} checkpoint; pass a stage1_64 run's checkpoints/best.pt")
    model_cfg = from_dict(Stage1ModelConfig, config["model"], f"{path}: model")
    network = resolve_stage1_network(model_cfg)
    model = build_stage1_network(network)
    model.load_state_dict(stage1_state(state["models"]["model"]))
    model.requires_grad_(False)
    return model.to(device).eval(), config


# ---- metrics and the evaluation writer -------------------------------------------------------------------------
PSNR_COLUMN = metric_column("psnr", 1.0)
SSIM_COLUMN = metric_column("ssim", 1.0)


def volume_metrics(pred: Tensor, target: Tensor, hu_window: Sequence[float] = XRAY2CT_HU_WINDOW,
                   literature: bool = False) -> dict[str, Tensor]:
    """Per-volume PSNR / 3D SSIM (data_range=1 on the [0, 1] window), MAE ([0, 1] and HU); pred clamped to [0, 1].

    ``literature=True`` adds X2CT-GAN's conventions in their own columns (:data:`X2CT_PSNR_COLUMN`: 0..2500
    integers, PIXEL_MAX 4095; :data:`X2CT_SSIM_COLUMN`: 2D SSIM averaged over the slices of all three axes;
    NaN on grids smaller than its 7-voxel window)."""
    pred = pred.float().clamp(0.0, 1.0)
    width = float(hu_window[1]) - float(hu_window[0])
    err = mae(pred, target)
    values = {PSNR_COLUMN: psnr(pred, target, data_range=1.0), SSIM_COLUMN: ssim(pred, target, data_range=1.0),
              "mae": err, "mae_hu": err * width}
    if literature:
        values[X2CT_PSNR_COLUMN] = psnr_x2ct(pred, target)
        if min(pred.shape[2:]) >= X2CT_SSIM_WINDOW:
            values[X2CT_SSIM_COLUMN] = ssim2d_x2ct(pred, target)
        else:
            values[X2CT_SSIM_COLUMN] = torch.full_like(err, float("nan"))
    return values


def write_orthogonal_slices_png(pred: np.ndarray, target: np.ndarray, path: Path, title: str,
                                hu_window: Sequence[float] = XRAY2CT_HU_WINDOW) -> Path:
    """Middle sagittal / coronal / axial slices (RAS volumes) of target (top row) and prediction (bottom), in HU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = float(hu_window[0]), float(hu_window[1])
    fig, axes = plt.subplots(2, 3, figsize=(8.4, 5.8), squeeze=False)
    for row, (label, volume) in enumerate((("target", target), ("prediction", pred))):
        hu = np.clip(np.asarray(volume, dtype=np.float32), 0.0, 1.0) * (high - low) + low
        c = [s // 2 for s in hu.shape]
        planes = (("sagittal (x=mid)", hu[c[0], :, :]), ("coronal (y=mid)", hu[:, c[1], :]), ("axial (z=mid)", hu[:, :, c[2]]))
        for col, (plane, image) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(image.T, cmap="gray", vmin=low, vmax=high, origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{label}: {plane}", fontsize=8)
    fig.suptitle(f"{title} (HU window [{low:g}, {high:g}], {pred.shape[0]}^3 voxels)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


@torch.no_grad()
def evaluate_volume_models(
    predict: Callable[[Mapping[str, Any]], Mapping[str, Tensor]],
    targets: Mapping[str, str],
    dataset: Any,
    out_dir: Path,
    device: torch.device,
    hu_window: Sequence[float] = XRAY2CT_HU_WINDOW,
    batch_size: int = 2,
    n_examples: int = 2,
) -> dict[str, pd.DataFrame]:
    """Score every model ``predict(batch)`` returns against its target field ``targets[model]``.

    Writes ``<out_dir>/<model>.csv`` (per volume), ``examples.npz`` (the first ``n_examples`` targets and
    predictions of the models scored on the LARGEST target, for :func:`ctpipe.report.plot_examples`) and
    ``<model>_slices.png`` (orthogonal slices of the first volume). ``predict`` computes all models of a
    batch at once, so shared work (the stage-1 forward pass) runs once.
    """
    from ctpipe.train import collate
    from torch.utils.data import DataLoader

    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {name: field_size(dataset.root, key) for name, key in targets.items()}
    example_key = targets[max(targets, key=lambda n: sizes[n])]
    example_models = [n for n in targets if targets[n] == example_key]
    extra = {"hu_window_low": float(hu_window[0]), "hu_window_high": float(hu_window[1])}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    examples: dict[str, list[np.ndarray]] = {"target": [], **{n: [] for n in example_models}}
    first: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in track(loader, f"final evaluation ({out_dir.name})", "batches"):
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        outputs = predict(batch)
        take = max(n_examples - len(examples["target"]), 0)
        examples["target"] += [t[0].cpu().numpy() for t in batch[example_key][:take]]
        for name, key in targets.items():
            pred, target = outputs[name].float().clamp(0.0, 1.0), batch[key]
            values = volume_metrics(pred, target, hu_window, literature=True)
            if name in examples:
                examples[name] += [p[0].cpu().numpy() for p in pred[:take]]
            if name not in first:
                first[name] = (pred[0, 0].cpu().numpy(), target[0, 0].cpu().numpy(), batch["sample_id"][0])
            for i in range(target.shape[0]):
                rows[name].append({"sample_id": batch["sample_id"][i], "patient_id": batch["patient_id"][i],
                                   **{k: float(v[i]) for k, v in values.items()}, "eval_size": sizes[name], **extra})
    frames = write_eval_tables(rows, out_dir)
    for name in rows:
        if name in first:
            pred, target, sample = first[name]
            write_orthogonal_slices_png(pred, target, out_dir / f"{name}_slices.png", f"{name} / {sample}", hu_window)
    write_examples(examples, out_dir)
    return frames


def evaluation_splits(task: Any) -> list[tuple[str, Any]]:
    """``[(split, dataset)]`` for the non-empty validation / test splits of a task; warns when either is empty
    (a figure measured on validation only was also used to choose ``best.pt``)."""
    found = [("validation", task.val_set), ("test", task.test_set)]
    present = [(name, data) for name, data in found if data is not None and len(data) > 0]
    missing = [name for name, data in found if data is None or len(data) == 0]
    if missing:
        log.warning("X-ray -> CT evaluation: the %s split(s) are empty, so no held-out figure is written for them; "
                    "prep the shard set with `ctpipe prep drr --split-fractions 0.8,0.1,0.1`", " and ".join(missing))
    return present


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
    from ctpipe.data.datasets import ShardDataset

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
    from ctpipe.data.datasets import ShardDataset

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


def with_baselines(predict: Callable[[Mapping[str, Any]], Mapping[str, Tensor]], targets: Mapping[str, str],
                   cfg: XRayDataConfig, own_field: str, device: torch.device
                   ) -> tuple[Callable[[Mapping[str, Any]], dict[str, Tensor]], dict[str, str]]:
    """Wrap an evaluation's ``predict`` and ``targets`` so that mean_volume and nearest_xray are scored beside
    the models, on every grid the models are scored on, by the same code."""
    fields = list(dict.fromkeys(targets.values()))
    reference = training_reference(cfg, fields)
    baselines = baseline_targets(fields, own_field)

    def predict_all(batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {**predict(batch), **baseline_predictions(reference, batch, baselines, device)}

    return predict_all, {**targets, **{name: field for name, (_, field) in baselines.items()}}
