"""Gather-based kernels for the pixel-driven projector pair ``W`` / ``W^T`` (fast on CPU).

They compute the same discrete operators as the ``grid_sample`` reference in
:mod:`ctpipe.ops.projector` (pixel ``p`` at angle ``theta`` sits at the fractional padded detector index
``u = X[theta, a] + Y[theta, b]``, split linearly between bins ``floor(u)`` and ``floor(u) + 1``), but
lay the data out so that the batch is the contiguous axis and the work is one fused gather-and-sum:

* ``W^T g`` (backprojection): ``F.embedding_bag`` with one bag per pixel and one entry per angle
  (index ``floor(u)``) over a table of sinogram rows ``(angle, detector bin) -> batch``, run twice:
  on the values ``g[i]`` and, weighted by ``w = u - floor(u)``, on the slopes ``g[i + 1] - g[i]``.
* ``W f`` (forward projection, the exact transpose): a counting sort of the *same* ``(floor(u), w)``
  pairs groups the pixels by detector bin (``floor(u)`` is monotone along each image row, so every
  bin's pixels of a row are contiguous and ranks come from a histogram, not a sort); two
  ``embedding_bag`` calls then give ``H0[d] = sum_{floor(u)=d} f`` and ``H1[d] = sum_{floor(u)=d} w f``,
  and ``(W f)[d] = H0[d] - H1[d] + H1[d - 1]``: the same coefficients ``1 - w`` and ``w`` as ``W^T``,
  so ``<W f, g> = <f, W^T g>`` holds to float rounding.

Symmetry folding: the angles ``theta_i = (i + 1/2) pi / A`` are closed under ``theta -> pi - theta``
(always), ``theta -> theta + pi/2`` and ``theta -> pi/2 - theta`` (``A`` even), and those maps move the
detector coordinate ``s = x cos + y sin`` exactly like a flip / rotation / transpose of the centred
pixel grid. So the interpolation pairs of one *base* angle serve up to four angles at once: the table
holds the four sinogram rows side by side (``4 * B`` wide, which costs the gather almost nothing) and
the four partial images are flipped/rotated/transposed back at the end. The fold is 4 when ``A % 4 == 0``
(LoDoPaB), 2 (mirror pairs only) for other even ``A``, 1 for odd ``A`` (:func:`fold_of`).

Measured (LoDoPaB, batch 8, 2-core AMD EPYC, see README "Benchmarks"): FBP ~35-50 ms per image vs
~240 ms for ``grid_sample``. ``torch.compile`` of :func:`backproject_gather` gave ~24 vs ~34 ms per image
after a ~50 s cold compile: not used (the eager path meets the target without a compiler dependency).

Everything is plain torch (device-agnostic); indices are recomputed per chunk of angles because a full
table for LoDoPaB (1000 angles x 131k pixels x 2 taps) would take about 2 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ctpipe.ops.geometry import ParallelBeamGeometry

# Bounded memory: pixels x base angles per chunk (about 8 bytes each for backprojection, ~60 forward).
GATHER_BUDGET_ENTRIES = 1 << 21

# The pixel maps tau of the fold (base-image index -> image index), in table-column order.
IDENTITY, MIRROR, ROTATE, TRANSPOSE = 0, 1, 2, 3


def fold_of(n_angles: int) -> int:
    """How many angles share one base angle's interpolation pairs: 4, 2 or 1 (see module doc)."""
    if n_angles % 4 == 0:
        return 4
    if n_angles % 2 == 0:
        return 2
    return 1


def _partner_angles(n_angles: int, fold: int) -> Tensor:
    """``(A / fold, fold)`` angle indices: column ``k`` is the image of the base angle under map ``k``."""
    base = torch.arange(n_angles // fold)
    columns = [base]  # IDENTITY
    if fold >= 2:
        columns.append(n_angles - 1 - base)  # MIRROR (pi - theta)
    if fold == 4:
        columns += [base + n_angles // 2, n_angles // 2 - 1 - base]  # ROTATE (theta + pi/2), TRANSPOSE (pi/2 - theta)
    return torch.stack(columns, 1)


@dataclass(frozen=True)
class _Plan:
    """Per-geometry constants on one device and dtype: padded detector coordinates of pixel rows/columns."""

    fold: int
    partners: Tensor  # (A_base, fold) int64
    along_x: Tensor  # (A_base, N): X[theta, a] = x_a cos(theta) / ds + offset (padded detector index units)
    along_y: Tensor  # (A_base, N): Y[theta, b] = y_b sin(theta) / ds
    needs_clamp: bool  # some pixel projects outside [-1, D] (detector narrower than the image diagonal)


@lru_cache(maxsize=16)
def _plan(geometry: ParallelBeamGeometry, dtype: torch.dtype, device: torch.device) -> _Plan:
    fold = fold_of(geometry.n_angles)
    partners = _partner_angles(geometry.n_angles, fold)
    theta = torch.as_tensor(geometry.angles, dtype=torch.float64)[partners[:, 0]]
    centers = torch.as_tensor(geometry.pixel_centers, dtype=torch.float64)
    # padded index: bin j of the detector is row j + 1 of the table (row 0 and rows D+1, D+2 are zeros)
    offset = geometry.detector_half_width / geometry.detector_spacing - 0.5 + 1.0
    along_x = torch.cos(theta)[:, None] * centers / geometry.detector_spacing + offset
    along_y = torch.sin(theta)[:, None] * centers / geometry.detector_spacing
    low = (along_x.min(1).values + along_y.min(1).values).min().item()
    high = (along_x.max(1).values + along_y.max(1).values).max().item()
    needs_clamp = low < 0.0 or high >= geometry.n_detector + 1.0
    return _Plan(fold, partners.to(device), along_x.to(dtype).to(device), along_y.to(dtype).to(device), needs_clamp)


def plan_for(geometry: ParallelBeamGeometry, dtype: torch.dtype, device: torch.device) -> _Plan:
    return _plan(geometry, dtype, torch.device(device))


def _positions(plan: _Plan, start: int, stop: int, layout: str, n_detector: int) -> Tensor:
    """Fractional padded detector index ``u`` for base angles ``start..stop-1``.

    ``layout="pixel"``: ``(N, N, c)`` (pixel-major, for backprojection bags);
    ``layout="angle"``: ``(c, N, N)`` (angle-major, for the forward projection's counting sort).
    Both hold bit-identical values (the same float additions).
    """
    x, y = plan.along_x[start:stop], plan.along_y[start:stop]
    if layout == "pixel":
        u = x.t()[:, None, :] + y.t()[None, :, :]
    else:
        u = x[:, :, None] + y[:, None, :]
    if plan.needs_clamp:
        u.clamp_(0.0, float(n_detector + 1))
    return u


def _chunk(plan: _Plan, n_pixels: int) -> int:
    return max(1, min(plan.along_x.shape[0], GATHER_BUDGET_ENTRIES // (n_pixels * n_pixels)))


# ---- tables: sinogram rows of the fold side by side ----------------------------------------------------
def _sinogram_table(sinogram: Tensor, plan: _Plan) -> Tensor:
    """(B, 1, A, D) -> (A_base, D + 3, fold * B): padded rows of the fold's angles, batch contiguous."""
    batch, _, n_angles, n_det = sinogram.shape
    rows = F.pad(sinogram.reshape(batch, n_angles, n_det), (1, 2)).permute(1, 2, 0)  # (A, D+3, B)
    table = rows[plan.partners]  # (A_base, fold, D+3, B)
    return table.permute(0, 2, 1, 3).reshape(plan.partners.shape[0], n_det + 3, plan.fold * batch)


def _image_table(image: Tensor, plan: _Plan) -> Tensor:
    """(B, 1, N, N) -> (N * N, fold * B): column block k holds the image pulled back by map k."""
    batch, _, n, _ = image.shape
    f = image.reshape(batch, n, n).permute(1, 2, 0)  # (N, N, B), f[a, b]
    views = [f, f.flip(0)][: plan.fold]
    if plan.fold == 4:
        views += [f.transpose(0, 1).flip(1), f.transpose(0, 1)]
    return torch.stack(views, 2).reshape(n * n, plan.fold * batch)


def _fold_image(acc: Tensor, plan: _Plan, batch: int, n: int) -> Tensor:
    """Adjoint of :func:`_image_table`: (N * N, fold * B) -> (B, 1, N, N)."""
    parts = acc.reshape(n, n, plan.fold, batch)
    image = parts[:, :, IDENTITY]
    if plan.fold >= 2:
        image = image + parts[:, :, MIRROR].flip(0)
    if plan.fold == 4:
        image = image + parts[:, :, ROTATE].flip(1).transpose(0, 1) + parts[:, :, TRANSPOSE].transpose(0, 1)
    return image.permute(2, 0, 1).reshape(batch, 1, n, n)


def _unfold_sinogram(base: Tensor, plan: _Plan, batch: int, n_angles: int) -> Tensor:
    """Adjoint of :func:`_sinogram_table` restricted to real bins: (A_base, D, fold * B) -> (B, 1, A, D)."""
    n_base, n_det = base.shape[0], base.shape[1]
    out = base.new_empty(n_angles, n_det, batch)
    out[plan.partners.reshape(-1)] = base.reshape(n_base, n_det, plan.fold, batch).permute(0, 2, 1, 3).reshape(
        n_base * plan.fold, n_det, batch)
    return out.permute(2, 0, 1).reshape(batch, 1, n_angles, n_det)


# ---- W^T: backprojection ------------------------------------------------------------------------------
def _lower_and_weight(plan: _Plan, start: int, stop: int, layout: str, n_detector: int) -> tuple[Tensor, Tensor]:
    """``(floor(u) as int32, u - floor(u))`` for base angles ``start..stop-1`` (``u >= 0``: truncation is floor)."""
    u = _positions(plan, start, stop, layout, n_detector)
    lower = u.to(torch.int32)
    return lower, u.sub_(lower)


def backproject_gather(sinogram: Tensor, geometry: ParallelBeamGeometry) -> Tensor:
    """Unscaled ``W^T g``: (B, 1, A, D) -> (B, 1, N, N).

    Linear interpolation as ``g[i] + w * (g[i + 1] - g[i])``: one index per pixel and angle, two
    ``embedding_bag`` passes (values unweighted, slopes weighted by ``w``) with the same index list.
    """
    batch, n, n_det = sinogram.shape[0], geometry.n_pixels, geometry.n_detector
    plan = plan_for(geometry, sinogram.dtype, sinogram.device)
    table = _sinogram_table(sinogram, plan)  # (A_base, D+3, width)
    slopes = torch.zeros_like(table)
    torch.sub(table[:, 1:], table[:, :-1], out=slopes[:, :-1])
    width = table.shape[2]
    table, slopes = table.reshape(-1, width), slopes.reshape(-1, width)
    acc = sinogram.new_zeros(n * n, width)
    step = _chunk(plan, n)
    for start in range(0, plan.partners.shape[0], step):
        stop = min(start + step, plan.partners.shape[0])
        count = stop - start
        lower, weight = _lower_and_weight(plan, start, stop, "pixel", n_det)  # (N, N, c)
        lower += torch.arange(start * (n_det + 3), stop * (n_det + 3), n_det + 3, dtype=torch.int32, device=lower.device)
        index = lower.reshape(-1)
        offsets = torch.arange(0, n * n * count, count, dtype=torch.int32, device=lower.device)
        acc += F.embedding_bag(index, table, offsets, mode="sum")
        acc += F.embedding_bag(index, slopes, offsets, mode="sum", per_sample_weights=weight.reshape(-1))
    return _fold_image(acc, plan, batch, n)


# ---- W: forward projection, the transpose of the same pairs ------------------------------------------------
def _bin_order(lower: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """Counting sort of pixels by ``(angle, bin)``: ``(positions (c, N, N), bag offsets (c * n_bins,))``.

    ``lower`` (c, N, N) int64 holds ``floor(u)``, nondecreasing along the last axis (``sin(theta) > 0``),
    so in row ``a`` the pixels of bin ``d`` are the contiguous run starting at ``first[a, d]``. A pixel's
    place in its bag (ordered by row, then column) is ``bag_start + rows_before + (b - first)``.
    """
    count, n, _ = lower.shape
    keys = (torch.arange(count * n, device=lower.device).reshape(count, n, 1) * n_bins + lower).reshape(-1)
    per_row = torch.bincount(keys, minlength=count * n * n_bins).reshape(count, n, n_bins)
    first = per_row.cumsum(2) - per_row  # first column of bin d in row a
    rows_before = per_row.cumsum(1) - per_row  # pixels of bin d in rows < a
    per_bag = per_row.sum(1).reshape(-1)
    bag_start = per_bag.cumsum(0) - per_bag
    base = bag_start.reshape(count, 1, n_bins) + rows_before - first
    columns = torch.arange(n, device=lower.device)
    positions = torch.take_along_dim(base, lower, dim=2) + columns
    return positions, bag_start


def forward_project_gather(image: Tensor, geometry: ParallelBeamGeometry) -> Tensor:
    """Unscaled ``W f``: (B, 1, N, N) -> (B, 1, A, D), the exact transpose of :func:`backproject_gather`."""
    batch, n, n_det = image.shape[0], geometry.n_pixels, geometry.n_detector
    plan = plan_for(geometry, image.dtype, image.device)
    table = _image_table(image, plan)
    width = table.shape[1]
    n_bins = n_det + 3
    n_base = plan.partners.shape[0]
    out = image.new_empty(n_base, n_det, width)
    pixel_ids = torch.arange(n * n, device=image.device)
    step = _chunk(plan, n)
    for start in range(0, n_base, step):
        stop = min(start + step, n_base)
        count = stop - start
        lower, weight = _lower_and_weight(plan, start, stop, "angle", n_det)  # (c, N, N)
        lower, weight = lower.to(torch.int64), weight.reshape(-1)
        positions, offsets = _bin_order(lower, n_bins)
        positions = positions.reshape(-1)
        order = torch.empty_like(positions).index_put_((positions,), pixel_ids.repeat(count))
        sorted_weight = torch.empty_like(weight).index_put_((positions,), weight)
        h0 = F.embedding_bag(order, table, offsets, mode="sum").reshape(count, n_bins, width)
        h1 = F.embedding_bag(order, table, offsets, mode="sum", per_sample_weights=sorted_weight)
        h1 = h1.reshape(count, n_bins, width)
        # real bins are padded rows 1..D: (W f)[d] = H0[d] - H1[d] + H1[d - 1]
        out[start:stop] = h0[:, 1 : n_det + 1] - h1[:, 1 : n_det + 1] + h1[:, 0:n_det]
    return _unfold_sinogram(out, plan, batch, geometry.n_angles)
