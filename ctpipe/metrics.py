"""Image-quality metrics with an explicit data range: PSNR, SSIM (2D and true 3D), MAE.

Every metric that depends on a data range takes it as a REQUIRED argument, because the range
changes the number: X2CT-GAN's PSNR used ``PIXEL_MAX = 4095`` on data clipped to [0, 2500], which
inflates PSNR by 4.3 dB. Accepted ranges (:data:`DataRange`):

* a positive float ``R``: the data live in ``[0, R]`` (e.g. ``1.0`` for normalised images, ``4095``
  for HU + 1024 offset data). ``target`` is checked to lie in ``[0, R]`` (with a small tolerance);
  predictions are not checked (a network may overshoot, that is part of its error).
* a ``(low, high)`` tuple: the data live in ``[low, high]`` (e.g. ``(-1.0, 1.0)`` after Tanh);
  the range is ``high - low`` and ``target`` is checked to lie in ``[low, high]``.
* ``"per_image"``: the LoDoPaB convention, ``max(target) - min(target)`` of each sample.

Inputs are ``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes (``C`` is normally 1; metrics
are averaged over channels). Results are per sample, shape ``(B,)``, float64 (all arithmetic is
done in float64 on the inputs' device).

SSIM matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, data_range=R)``: Gaussian window sigma 1.5 truncated at 3.5 sigma
(11 taps), K1 = 0.01, K2 = 0.03, mean of the SSIM map over the region where the window fits
(``(W - 1) / 2`` pixels cropped from every border). For volumes :func:`ssim` is a true 3D SSIM
(the same separable Gaussian along all three axes, as skimage does for a 3D array);
:func:`ssim_slicewise` is the mean of 2D SSIM over axial slices (first spatial axis, ``D``).

Results are written to tables under names that carry the range (:func:`metric_column`), e.g.
``psnr[range=1]`` and ``psnr[range=per_image]``, so two numbers computed with different ranges
can never share a column. :class:`MetricAccumulator` collects per-sample values and sums that a
distributed reduction adds up (never averages of averages) and reports the observed target range
next to the declared one, which makes a range mismatch visible in every summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DataRange",
    "PER_IMAGE",
    "RANGE_TOLERANCE",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
    "SSIM_K1",
    "SSIM_K2",
    "MetricSpec",
    "METRIC_SPECS",
    "MetricAccumulator",
    "REDUCE_OPS",
    "check_range",
    "data_range_label",
    "mae",
    "merge_states",
    "metric_column",
    "psnr",
    "ssim",
    "ssim_slicewise",
    "ssim_window_size",
    "X2CT_PSNR_COLUMN",
    "X2CT_SSIM_COLUMN",
    "psnr_x2ct",
    "ssim2d_x2ct",
]

PER_IMAGE = "per_image"
DataRange = Union[float, int, tuple[float, float], Literal["per_image"]]

RANGE_TOLERANCE = 1e-3  # relative to the range width: how far ``target`` may stray outside it
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# --------------------------------------------------------------------------------------------
# data range handling
# --------------------------------------------------------------------------------------------


def _bounds(data_range: DataRange) -> tuple[float, float] | None:
    """Validated ``(low, high)`` for a fixed range, ``None`` for ``"per_image"``."""
    if isinstance(data_range, str):
        if data_range != PER_IMAGE:
            raise ValueError(
                f"data_range={data_range!r} is not understood: pass a positive float (data in "
                f"[0, R]), a (low, high) tuple, or the string {PER_IMAGE!r}"
            )
        return None
    if isinstance(data_range, bool):
        raise TypeError("data_range must be a number, a (low, high) tuple or 'per_image', not a bool")
    if isinstance(data_range, (tuple, list)):
        if len(data_range) != 2:
            raise ValueError(f"data_range tuple must be (low, high), got {data_range!r}")
        low, high = float(data_range[0]), float(data_range[1])
    elif isinstance(data_range, (int, float)):
        low, high = 0.0, float(data_range)
    else:
        raise TypeError(
            f"data_range must be a float, a (low, high) tuple or {PER_IMAGE!r}, "
            f"got {type(data_range).__name__}"
        )
    if not (math.isfinite(low) and math.isfinite(high)) or high - low <= 0:
        raise ValueError(
            f"data_range={data_range!r} is empty or not finite: the range width must be > 0 "
            "(e.g. 1.0 for images in [0, 1], 4095 for HU+1024 data)"
        )
    return low, high


def data_range_label(data_range: DataRange) -> str:
    """Short text for a range, used in column names: ``1``, ``4095``, ``-1..1``, ``per_image``."""
    bounds = _bounds(data_range)
    if bounds is None:
        return PER_IMAGE
    low, high = bounds
    if low == 0.0:
        return f"{high:g}"
    return f"{low:g}..{high:g}"


def metric_column(name: str, data_range: DataRange | None) -> str:
    """Column name that carries the range: ``metric_column("psnr", 1.0) == "psnr[range=1]"``.

    ``data_range=None`` is for range-free metrics (MAE) and gives the bare name.
    """
    if data_range is None:
        return name
    return f"{name}[range={data_range_label(data_range)}]"


def check_range(x: Tensor, low: float, high: float, name: str, tol: float = RANGE_TOLERANCE) -> None:
    """Raise ``ValueError`` unless all of ``x`` is finite and lies in ``[low, high]``.

    ``tol`` is relative to ``high - low``: values up to ``tol * (high - low)`` outside pass (they
    come from float round-off in normalisation, not from a wrong range).
    """
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if x.numel() == 0:
        return
    slack = tol * (high - low)
    lo, hi = float(x.min()), float(x.max())
    if lo < low - slack or hi > high + slack:
        raise ValueError(
            f"{name} values lie in [{lo:g}, {hi:g}], outside the declared data range "
            f"[{low:g}, {high:g}]. Pass the range the data really use (e.g. data_range=1.0 for "
            f"[0, 1] images, data_range=({lo:g}, {hi:g})-like bounds for signed data, or "
            f"'{PER_IMAGE}'), or normalise the data first."
        )


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.ndim not in (4, 5):
        raise ValueError(
            f"expected (B, C, H, W) images or (B, C, D, H, W) volumes, got shape {tuple(pred.shape)}"
        )


def _range_per_sample(target: Tensor, data_range: DataRange) -> Tensor:
    """Range width per sample, ``(B,)`` float64; also checks ``target`` against a fixed range."""
    bounds = _bounds(data_range)
    t = target.detach()
    if bounds is None:
        if not bool(torch.isfinite(t).all()):
            raise ValueError("target contains NaN or infinite values")
        flat = t.reshape(t.shape[0], -1).to(torch.float64)
        width = flat.amax(dim=1) - flat.amin(dim=1)
        if bool((width <= 0).any()):
            bad = torch.nonzero(width <= 0).flatten().tolist()
            raise ValueError(
                f"data_range='{PER_IMAGE}' is undefined for constant targets (samples {bad}): "
                "use a fixed data_range for such data"
            )
        return width
    low, high = bounds
    check_range(t, low, high, "target")
    return torch.full((t.shape[0],), high - low, dtype=torch.float64, device=t.device)


# --------------------------------------------------------------------------------------------
# PSNR / MAE
# --------------------------------------------------------------------------------------------


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _mse64(pred: Tensor, target: Tensor) -> Tensor:
    diff = pred.detach().to(torch.float64) - target.detach().to(torch.float64)
    return _per_sample_mean(diff * diff)


def psnr(pred: Tensor, target: Tensor, data_range: DataRange) -> Tensor:
    """Peak signal-to-noise ratio per sample in dB, ``(B,)`` float64: ``10 log10(R^2 / MSE)``.

    Identical images give ``inf``. ``data_range`` is required (see the module docstring).
    """
    _check_pair(pred, target)
    width = _range_per_sample(target, data_range)
    return 10.0 * torch.log10(width * width / _mse64(pred, target))


def mae(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error per sample, ``(B,)`` float64, in the units of the data."""
    _check_pair(pred, target)
    diff = pred.detach().to(torch.float64) - target.detach().to(torch.float64)
    return _per_sample_mean(diff.abs())


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def ssim_window_size(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> int:
    """Taps of the Gaussian window (scipy's radius ``int(truncate * sigma + 0.5)``): 11."""
    return 2 * int(truncate * sigma + 0.5) + 1


def _gaussian_kernel1d(device: torch.device) -> Tensor:
    radius = ssim_window_size() // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return g / g.sum()


def _filter_valid(x: Tensor, kernel1d: Tensor) -> Tensor:
    """Separable Gaussian filter of ``(N, 1, *spatial)`` keeping only where the window fits."""
    n_spatial = x.ndim - 2
    conv = F.conv2d if n_spatial == 2 else F.conv3d
    for axis in range(n_spatial):
        shape = [1] * n_spatial
        shape[axis] = kernel1d.numel()
        x = conv(x, kernel1d.reshape(1, 1, *shape))
    return x


def _ssim_core(pred: Tensor, target: Tensor, width: Tensor) -> Tensor:
    """SSIM of ``(B, C, *spatial)`` with ``width`` ``(B,)``; Gaussian window over all spatial axes."""
    batch, channels = pred.shape[:2]
    spatial = pred.shape[2:]
    win = ssim_window_size()
    if min(spatial) < win:
        raise ValueError(
            f"SSIM needs at least {win} pixels along every spatial axis, got {tuple(spatial)}"
        )
    x = pred.detach().to(torch.float64).reshape(batch * channels, 1, *spatial)
    y = target.detach().to(torch.float64).reshape(batch * channels, 1, *spatial)
    kernel = _gaussian_kernel1d(x.device)
    mu_x, mu_y = _filter_valid(x, kernel), _filter_valid(y, kernel)
    var_x = _filter_valid(x * x, kernel) - mu_x * mu_x
    var_y = _filter_valid(y * y, kernel) - mu_y * mu_y
    cov = _filter_valid(x * y, kernel) - mu_x * mu_y
    r = width.repeat_interleave(channels).reshape(-1, *([1] * (x.ndim - 1)))
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    per_channel = _per_sample_mean(numerator / denominator)
    return per_channel.reshape(batch, channels).mean(dim=1)


def ssim(pred: Tensor, target: Tensor, data_range: DataRange) -> Tensor:
    """Structural similarity per sample, ``(B,)`` float64.

    4D input: 2D SSIM. 5D input: true 3D SSIM (3D Gaussian window), equal to skimage's
    ``structural_similarity`` on the 3D array. Every spatial axis needs >= 11 samples.
    """
    _check_pair(pred, target)
    width = _range_per_sample(target, data_range)
    return _ssim_core(pred, target, width)


def ssim_slicewise(pred: Tensor, target: Tensor, data_range: DataRange) -> Tensor:
    """Mean of 2D SSIM over the axial slices (axis ``D``) of ``(B, C, D, H, W)`` volumes, ``(B,)``.

    With ``"per_image"`` the range is that of the whole volume (one range per sample, as for
    the other metrics), not of each slice.
    """
    _check_pair(pred, target)
    if pred.ndim != 5:
        raise ValueError(f"ssim_slicewise expects (B, C, D, H, W) volumes, got {tuple(pred.shape)}")
    width = _range_per_sample(target, data_range)
    batch, channels, depth, height, wid = pred.shape

    def to_slices(v: Tensor) -> Tensor:
        return v.permute(0, 2, 1, 3, 4).reshape(batch * depth, channels, height, wid)

    per_slice = _ssim_core(to_slices(pred), to_slices(target), width.repeat_interleave(depth))
    return per_slice.reshape(batch, depth).mean(dim=1)


# --------------------------------------------------------------------------------------------
# X2CT-GAN's conventions (for comparison with the literature only)
# --------------------------------------------------------------------------------------------
# X2CT-GAN (Ying et al., CVPR 2019; PerX2CT follows it) scores volumes that live in [0, 1] (HU + 1024
# clipped to [0, 2500], scaled) in two ways that differ from ctpipe's true-range metrics:
# * PSNR: both volumes mapped back to 0..2500 and truncated to integers, then PIXEL_MAX = 4095:
#   ``20 log10(4095 / sqrt(MSE))`` (100 when MSE = 0). 4095 > 2500 adds 20 log10(4095/2500) = +4.29 dB.
# * SSIM: 2D SSIM (skimage defaults of the time: 7x7 uniform window, sample covariance, K1 0.01,
#   K2 0.03, data_range 1 on the [0, 1] volumes, mean over the window-valid region) of every slice
#   along each of the three axes; the mean over the slices of an axis, then the mean of the three axes.
X2CT_PSNR_COLUMN = "psnr[x2ct:0-2500,max=4095]"
X2CT_SSIM_COLUMN = "ssim2d[x2ct:3-axis mean]"
X2CT_CT_MAX = 2500
X2CT_PIXEL_MAX = 4095.0
X2CT_SSIM_WINDOW = 7


def _check_unit_volumes(pred: Tensor, target: Tensor, name: str) -> None:
    _check_pair(pred, target)
    if pred.ndim != 5:
        raise ValueError(f"{name} expects (B, C, D, H, W) volumes in [0, 1], got shape {tuple(pred.shape)}")
    check_range(target, 0.0, 1.0, f"{name} target (X2CT-GAN's convention needs the [0, 1] window)")


def psnr_x2ct(pred: Tensor, target: Tensor) -> Tensor:
    """X2CT-GAN's PSNR per volume, ``(B,)`` float64: [0, 1] volumes -> ``int(x * 2500)``, PIXEL_MAX 4095.

    ``pred`` is clipped to [0, 1] first (X2CT-GAN clips its generator output). NOT a true-range PSNR:
    reported only in the column :data:`X2CT_PSNR_COLUMN`, beside ``psnr[range=1]``.
    """
    _check_unit_volumes(pred, target, "psnr_x2ct")

    def to_counts(v: Tensor) -> Tensor:
        return torch.trunc(v.detach().to(torch.float64).clamp(0.0, 1.0) * X2CT_CT_MAX)

    mse = _mse64(to_counts(pred), to_counts(target))
    safe = torch.where(mse == 0, torch.ones_like(mse), mse)
    value = 20.0 * torch.log10(X2CT_PIXEL_MAX / torch.sqrt(safe))
    return torch.where(mse == 0, torch.full_like(value, 100.0), value)


def _ssim2d_uniform(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """Mean 2D SSIM of ``(N, 1, H, W)`` slices with a 7x7 uniform window and sample covariance, ``(N,)``."""
    win = X2CT_SSIM_WINDOW
    if min(x.shape[-2:]) < win:
        raise ValueError(f"ssim2d_x2ct needs at least {win} voxels along every axis, got {tuple(x.shape[-2:])}")
    kernel = torch.full((1, 1, win, win), 1.0 / win**2, dtype=torch.float64, device=x.device)
    mean = lambda v: F.conv2d(v, kernel)  # noqa: E731  (window-valid region only)
    cov_norm = win**2 / (win**2 - 1.0)
    mu_x, mu_y = mean(x), mean(y)
    var_x = cov_norm * (mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (mean(y * y) - mu_y * mu_y)
    cov = cov_norm * (mean(x * y) - mu_x * mu_y)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return _per_sample_mean(s)


def ssim2d_x2ct(pred: Tensor, target: Tensor) -> Tensor:
    """X2CT-GAN's SSIM per volume, ``(B,)`` float64: the mean over the three axes of the mean 2D SSIM of the
    slices along that axis (7x7 uniform window, sample covariance, data_range 1 on [0, 1] volumes).

    ``pred`` is clipped to [0, 1] first. Reported only in the column :data:`X2CT_SSIM_COLUMN`, beside
    the true 3D ``ssim[range=1]``.
    """
    _check_unit_volumes(pred, target, "ssim2d_x2ct")
    x = pred.detach().to(torch.float64).clamp(0.0, 1.0).mean(dim=1)  # (B, D, H, W); channels are averaged
    y = target.detach().to(torch.float64).mean(dim=1)
    batch = x.shape[0]
    per_axis = []
    for axis in (1, 2, 3):
        xs = x.movedim(axis, 1).reshape(-1, 1, *[n for a, n in enumerate(x.shape) if a not in (0, axis)])
        ys = y.movedim(axis, 1).reshape(-1, 1, *[n for a, n in enumerate(y.shape) if a not in (0, axis)])
        per_axis.append(_ssim2d_uniform(xs, ys, 1.0).reshape(batch, -1).mean(dim=1))
    return torch.stack(per_axis).mean(dim=0)


# --------------------------------------------------------------------------------------------
# naming
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """What a metric column means: its name, the data range it was computed with, its direction."""

    name: str
    data_range: str  # a data_range_label(): "1", "4095", "-1..1", "per_image"; "" when range-free
    higher_is_better: bool

    @property
    def column(self) -> str:
        return f"{self.name}[range={self.data_range}]" if self.data_range else self.name


METRIC_SPECS: dict[str, bool] = {  # metric name -> higher_is_better
    "psnr": True,
    "psnr_pooled": True,
    "ssim": True,
    "ssim_slicewise": True,
    "mae": False,
}
_RANGE_FREE = frozenset({"mae"})


def _spec(name: str, data_range: DataRange) -> MetricSpec:
    label = "" if name in _RANGE_FREE else data_range_label(data_range)
    return MetricSpec(name=name, data_range=label, higher_is_better=METRIC_SPECS[name])


# --------------------------------------------------------------------------------------------
# accumulation for evaluation loops (distributed-friendly)
# --------------------------------------------------------------------------------------------

REDUCE_OPS: dict[str, str] = {  # state key -> how a distributed reduction combines it
    "count": "sum",
    "psnr_sum": "sum",
    "ssim_sum": "sum",
    "mae_sum": "sum",
    "sse_sum": "sum",
    "n_elements": "sum",
    "target_min": "min",
    "target_max": "max",
}


def merge_states(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Combine accumulator states as ``all_reduce`` would (sum / min / max per :data:`REDUCE_OPS`)."""
    if not states:
        raise ValueError("merge_states needs at least one state")
    reducers = {"sum": torch.sum, "min": torch.amin, "max": torch.amax}
    return {
        key: reducers[op](torch.stack([s[key].to(states[0][key].device) for s in states]), dim=0)
        for key, op in REDUCE_OPS.items()
    }


class MetricAccumulator:
    """Collect PSNR / SSIM / MAE over an evaluation set, per sample and as reducible sums.

    ``volume_ssim`` chooses SSIM for 5D input: ``"3d"`` (true 3D SSIM, column ``ssim``) or
    ``"slicewise"`` (column ``ssim_slicewise``). Distributed use: every rank calls
    :meth:`update`; then ``all_reduce`` each tensor of :meth:`state` with the op in
    :data:`REDUCE_OPS` (or gather the states and call :func:`merge_states`) and pass the result
    to :meth:`summary`. Per-sample values (:meth:`rows`) stay on each rank (gather with
    ``all_gather_object`` if wanted).

    ``psnr`` in the summary is the mean of per-sample PSNRs (the LoDoPaB convention);
    ``psnr_pooled`` (fixed ranges only) is the PSNR of the pooled MSE over all pixels.
    The summary also reports ``target_min`` / ``target_max`` seen, so a declared range that does
    not fit the data (e.g. 4095 for data in [0, 2500]) is visible next to the number.
    """

    def __init__(self, data_range: DataRange, volume_ssim: Literal["3d", "slicewise"] = "3d") -> None:
        _bounds(data_range)  # validate now, not at the first update
        if volume_ssim not in ("3d", "slicewise"):
            raise ValueError(f"volume_ssim must be '3d' or 'slicewise', got {volume_ssim!r}")
        self.data_range = data_range
        self.volume_ssim = volume_ssim
        self._ndim: int | None = None
        self._sums: dict[str, Tensor] | None = None
        self._values: list[Tensor] = []  # (b, 3) float64 per update: psnr, ssim, mae
        self._ids: list[str] = []

    @property
    def ssim_name(self) -> str:
        return "ssim_slicewise" if self._ndim == 5 and self.volume_ssim == "slicewise" else "ssim"

    def _metric_names(self) -> tuple[str, str, str]:
        return ("psnr", self.ssim_name, "mae")

    def _empty_sums(self, device: torch.device) -> dict[str, Tensor]:
        sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in REDUCE_OPS}
        sums["target_min"] = torch.tensor(math.inf, dtype=torch.float64, device=device)
        sums["target_max"] = torch.tensor(-math.inf, dtype=torch.float64, device=device)
        return sums

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, sample_ids: Sequence[str]) -> Tensor:
        """Add a batch; returns its per-sample values ``(B, 3)`` (psnr, ssim, mae)."""
        _check_pair(pred, target)
        if len(sample_ids) != pred.shape[0]:
            raise ValueError(f"{len(sample_ids)} sample_ids for a batch of {pred.shape[0]}")
        if self._ndim is None:
            self._ndim = pred.ndim
            self._sums = self._empty_sums(pred.device)
        elif pred.ndim != self._ndim:
            raise ValueError(f"mixed {self._ndim}D and {pred.ndim}D inputs in one accumulator")
        assert self._sums is not None
        ssim_fn = ssim_slicewise if self.ssim_name == "ssim_slicewise" else ssim
        values = torch.stack(
            [psnr(pred, target, self.data_range), ssim_fn(pred, target, self.data_range), mae(pred, target)],
            dim=1,
        )
        sse = _mse64(pred, target) * target[0].numel()
        t = target.detach().to(torch.float64)
        s = self._sums
        s["count"] += pred.shape[0]
        s["psnr_sum"] += values[:, 0].sum()
        s["ssim_sum"] += values[:, 1].sum()
        s["mae_sum"] += values[:, 2].sum()
        s["sse_sum"] += sse.sum()
        s["n_elements"] += target.numel()
        s["target_min"] = torch.minimum(s["target_min"], t.min())
        s["target_max"] = torch.maximum(s["target_max"], t.max())
        self._values.append(values)
        self._ids.extend(str(i) for i in sample_ids)
        return values

    def state(self, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """The reducible state: float64 scalar tensors (see REDUCE_OPS).

        On ``device`` if given (NCCL needs CUDA tensors, also on a rank that saw no sample),
        else on the inputs' device (CPU before the first update).
        """
        if self._sums is None:
            sums = self._empty_sums(torch.device(device if device is not None else "cpu"))
        else:
            sums = {k: v.clone() for k, v in self._sums.items()}
        return sums if device is None else {k: v.to(device) for k, v in sums.items()}

    def columns(self) -> list[MetricSpec]:
        """The specs of the per-sample columns, in the order of :meth:`rows` values."""
        return [_spec(name, self.data_range) for name in self._metric_names()]

    def rows(self) -> list[dict[str, float | str]]:
        """One dict per sample seen by this process: ``sample_id`` and one entry per metric column."""
        if not self._values:
            return []
        values = torch.cat(self._values).cpu().tolist()
        names = [spec.column for spec in self.columns()]
        return [{"sample_id": sid, **dict(zip(names, row))} for sid, row in zip(self._ids, values)]

    def summary(self, state: dict[str, Tensor] | None = None) -> dict[str, float]:
        """Means over all samples (of ``state``, default this process's), keyed by column name."""
        s = {k: float(v) for k, v in (self.state() if state is None else state).items()}
        count = s["count"]
        if count == 0:
            raise ValueError("MetricAccumulator.summary: no samples were added")
        names = self._metric_names()
        out: dict[str, float] = {
            _spec(names[0], self.data_range).column: s["psnr_sum"] / count,
            _spec(names[1], self.data_range).column: s["ssim_sum"] / count,
            _spec(names[2], self.data_range).column: s["mae_sum"] / count,
        }
        bounds = _bounds(self.data_range)
        if bounds is not None:
            width = bounds[1] - bounds[0]
            mse = s["sse_sum"] / s["n_elements"]
            pooled = math.inf if mse == 0 else 10.0 * math.log10(width * width / mse)
            out[_spec("psnr_pooled", self.data_range).column] = pooled
        out["n_samples"] = count
        out["target_min"] = s["target_min"]
        out["target_max"] = s["target_max"]
        return out
