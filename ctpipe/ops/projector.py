"""Parallel-beam forward projection, its exact adjoint, and filtered backprojection (FBP).

Conventions are those of :mod:`ctpipe.ops.geometry` (ODL's, as LoDoPaB stores its data): an image
``img[..., a, b] = f(x_a, y_b)`` (first axis x, second y, ascending) and a sinogram
``sino[..., i, j]`` = integral of f along ``x cos(theta_i) + y sin(theta_i) = s_j``.

Discretisation (pixel-driven, linear interpolation on the detector): every pixel centre ``p`` is
projected at angle ``theta_i`` onto ``s = x_p cos(theta_i) + y_p sin(theta_i)``, i.e. onto the
fractional detector index ``u = (s + detector_half_width) / detector_spacing - 1/2``; its value is
split between bins ``floor(u)`` and ``floor(u) + 1`` with linear weights ``W[i, j, p]`` (bins outside
the detector receive nothing). Then

* ``forward_project(f) = (pixel_size^2 / detector_spacing) * W f`` -- a pixel's mass spread over the
  detector, per metre of detector: the line integral (image value x metres);
* ``backproject(g) = (pixel_size^2 / detector_spacing) * W^T g`` -- the exact Euclidean adjoint;
* ``fbp(g) = (pi / n_angles) * W^T ramp(g)`` -- the discrete inversion formula.

Both operators are :class:`torch.autograd.Function` whose backward is the other one, so gradients are
exact and cost one operator application. Angles are processed in chunks so memory stays bounded.

Two implementations of the same ``W`` / ``W^T`` (``method=``; both exact adjoint pairs, equal to float
rounding):

* ``"grid_sample"`` -- the reference: ``F.grid_sample`` over angle chunks for ``W^T`` and its input
  gradient kernel (``grid_sampler_2d_backward``) for ``W``;
* ``"gather"`` -- :mod:`ctpipe.ops.fast_backproject`: batch-contiguous ``embedding_bag`` gathers with
  4-fold angle-symmetry folding; about 6-10x faster on CPU (see ``python -m benchmarks.fbp``).

``method=None`` picks by device (:func:`default_method`): ``"gather"`` on CPU, ``"grid_sample"`` on
CUDA and other accelerators (grid_sample's GPU kernel is the well-trodden path there; the gather path
also runs on CUDA and is tested there when a GPU is present, but has not been benchmarked on one).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ctpipe.ops.fast_backproject import backproject_gather, forward_project_gather
from ctpipe.ops.filters import LODOPAB_HANN_SCALING, filter_frequencies, ramp_filter, window_values
from ctpipe.ops.geometry import ParallelBeamGeometry

# Angles per chunk: at most this many grid points (angles x pixels), whatever the batch, so the number of
# kernel launches per operator is bounded by the geometry alone (~5 per chunk; LoDoPaB: 32 chunks). The
# chunk's temporaries are angles x pixels x batch values (LoDoPaB, batch 64: ~1 GiB in float32).
CHUNK_BUDGET_ELEMENTS = 1 << 22


# ---- shape checks --------------------------------------------------------------------------------
def _check_input(tensor: Tensor, expected: tuple[int, int], what: str, function: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{function}: {what} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 4 or tensor.shape[1] != 1 or tuple(tensor.shape[2:]) != expected:
        raise ValueError(
            f"{function}: {what} must have shape (B, 1, {expected[0]}, {expected[1]}) for this geometry, "
            f"got {tuple(tensor.shape)}; add batch/channel axes with x[None, None] or x.unsqueeze(1)"
        )
    if not tensor.is_floating_point():
        raise TypeError(f"{function}: {what} must be float32 or float64, got {tensor.dtype}")


# ---- sampling grids, one chunk of angles at a time ---------------------------------------------------
def _chunk_size(geometry: ParallelBeamGeometry) -> int:
    return max(1, min(geometry.n_angles, CHUNK_BUDGET_ELEMENTS // geometry.n_pixels**2))


def _chunks(geometry: ParallelBeamGeometry) -> Iterator[tuple[int, int]]:
    step = _chunk_size(geometry)
    for start in range(0, geometry.n_angles, step):
        yield start, min(start + step, geometry.n_angles)


@functools.lru_cache(maxsize=16)
def _grid_coordinates(geometry: ParallelBeamGeometry, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(along_x, along_y)`` of shape ``(A, N)``, built once per (geometry, dtype, device) and kept there:
    the operator loops slice them and copy nothing from the host."""
    theta = torch.as_tensor(geometry.angles, dtype=torch.float64)
    centers = torch.as_tensor(geometry.pixel_centers, dtype=torch.float64)
    scale = 1.0 / geometry.detector_half_width
    along_x = (torch.cos(theta)[:, None] * centers * scale).to(dtype)
    along_y = (torch.sin(theta)[:, None] * centers * scale).to(dtype)
    return along_x.to(device), along_y.to(device)


def _grid(geometry: ParallelBeamGeometry, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``grid_sample`` grid ``(c, N, N, 2)`` for angles ``start..stop-1``.

    With ``align_corners=False`` and a detector of width ``2 * detector_half_width`` sampled at cell
    midpoints, the normalised detector coordinate of ``s`` is ``s / detector_half_width``; the second
    (height) coordinate is 0 on a one-row "image". Entry ``[i, a, b]`` is pixel ``(x_a, y_b)``.
    """
    along_x, along_y = _grid_coordinates(geometry, dtype, torch.device(device))
    grid = torch.zeros(stop - start, geometry.n_pixels, geometry.n_pixels, 2, dtype=dtype, device=device)
    torch.add(along_x[start:stop, :, None], along_y[start:stop, None, :], out=grid[..., 0])
    return grid


# ---- the two discrete operators W and W^T ----------------------------------------------------------
# Angles play the role of grid_sample's batch axis and the image batch its channel axis: the sinogram
# row of angle i is a (B, 1, D) "image" sampled at the grid of angle i. grid_sample's input gradient is
# the exact transpose of grid_sample, so W is computed by that backward kernel.
_BILINEAR, _ZEROS = 0, 0


def _apply_w(image: Tensor, geometry: ParallelBeamGeometry) -> Tensor:
    """``W f``: (B, 1, N, N) -> (B, 1, A, D), unscaled (interpolation weights only)."""
    batch, n_pix, n_det = image.shape[0], geometry.n_pixels, geometry.n_detector
    pixels = image.reshape(1, batch, n_pix, n_pix)
    out = image.new_empty(geometry.n_angles, batch, 1, n_det)
    for start, stop in _chunks(geometry):
        grid = _grid(geometry, start, stop, image.dtype, image.device)
        count = stop - start
        shape_only = image.new_empty(count, batch, 1, n_det)
        out[start:stop] = torch.ops.aten.grid_sampler_2d_backward(
            pixels.expand(count, batch, n_pix, n_pix), shape_only, grid, _BILINEAR, _ZEROS, False, [True, False]
        )[0]
    return out.permute(1, 2, 0, 3).reshape(batch, 1, geometry.n_angles, n_det)


def _apply_wt(sinogram: Tensor, geometry: ParallelBeamGeometry) -> Tensor:
    """``W^T g``: (B, 1, A, D) -> (B, 1, N, N), unscaled (sum over angles of interpolated values)."""
    batch, n_pix = sinogram.shape[0], geometry.n_pixels
    rows = sinogram.reshape(batch, geometry.n_angles, 1, geometry.n_detector).transpose(0, 1).contiguous()  # (A, B, 1, D)
    acc = sinogram.new_zeros(batch, n_pix, n_pix)
    for start, stop in _chunks(geometry):
        grid = _grid(geometry, start, stop, sinogram.dtype, sinogram.device)
        values = F.grid_sample(
            rows[start:stop], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        acc += values.sum(0)
    return acc.reshape(batch, 1, n_pix, n_pix)


def _scale(geometry: ParallelBeamGeometry) -> float:
    return geometry.pixel_size**2 / geometry.detector_spacing


# ---- method selection: explicit dicts, one entry per implementation --------------------------------------
_FORWARD: dict[str, Callable[[Tensor, ParallelBeamGeometry], Tensor]] = {
    "gather": forward_project_gather,
    "grid_sample": _apply_w,
}
_BACKWARD: dict[str, Callable[[Tensor, ParallelBeamGeometry], Tensor]] = {
    "gather": backproject_gather,
    "grid_sample": _apply_wt,
}
METHODS = tuple(_FORWARD)


def default_method(device: torch.device | str) -> str:
    """``"gather"`` on CPU (measured fastest there), ``"grid_sample"`` elsewhere."""
    return "gather" if torch.device(device).type == "cpu" else "grid_sample"


def _resolve_method(method: str | None, tensor: Tensor, function: str) -> str:
    if method is None:
        return default_method(tensor.device)
    if method not in _FORWARD:
        raise ValueError(f"{function}: unknown method {method!r}; valid: {list(METHODS)} or None (by device)")
    return method


class _ForwardProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image: Tensor, geometry: ParallelBeamGeometry, method: str) -> Tensor:  # type: ignore[override]
        ctx.geometry, ctx.method = geometry, method
        return _FORWARD[method](image, geometry) * _scale(geometry)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _Backproject.apply(grad.contiguous(), ctx.geometry, ctx.method), None, None


class _Backproject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sinogram: Tensor, geometry: ParallelBeamGeometry, method: str) -> Tensor:  # type: ignore[override]
        ctx.geometry, ctx.method = geometry, method
        return _BACKWARD[method](sinogram, geometry) * _scale(geometry)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _ForwardProject.apply(grad.contiguous(), ctx.geometry, ctx.method), None, None


# ---- public API ------------------------------------------------------------------------------------
def forward_project(image: Tensor, geometry: ParallelBeamGeometry, *, method: str | None = None) -> Tensor:
    """Line integrals of ``image`` (B, 1, N, N) -> sinogram (B, 1, A, D), in image units x metres.

    ``method``: ``"gather"``, ``"grid_sample"`` or ``None`` (by device, see :func:`default_method`).
    """
    _check_input(image, geometry.image_shape, "image", "forward_project")
    return _ForwardProject.apply(image.contiguous(), geometry, _resolve_method(method, image, "forward_project"))


def backproject(sinogram: Tensor, geometry: ParallelBeamGeometry, *, method: str | None = None) -> Tensor:
    """Exact adjoint of :func:`forward_project`: sinogram (B, 1, A, D) -> image (B, 1, N, N)."""
    _check_input(sinogram, geometry.sinogram_shape, "sinogram", "backproject")
    return _Backproject.apply(sinogram.contiguous(), geometry, _resolve_method(method, sinogram, "backproject"))


def fbp_backprojection_scale(geometry: ParallelBeamGeometry) -> float:
    """Factor turning :func:`backproject` of a ramp-filtered sinogram into FBP: ``(pi/A) / scale``."""
    return (math.pi / geometry.n_angles) / _scale(geometry)


def filtered_backprojection(sinogram: Tensor, geometry: ParallelBeamGeometry, window_response: Tensor | None,
                            padding: bool = True, *, method: str | None = None) -> Tensor:
    """FBP with a given window response at ``filter_frequencies(D, padding)`` (``None``: Ram-Lak)."""
    _check_input(sinogram, geometry.sinogram_shape, "sinogram", "fbp")
    filtered = ramp_filter(sinogram, window_response, padding, detector_spacing=geometry.detector_spacing)
    return backproject(filtered, geometry, method=method) * fbp_backprojection_scale(geometry)


def fbp(
    sinogram: Tensor,
    geometry: ParallelBeamGeometry,
    window: str = "hann",
    frequency_scaling: float = LODOPAB_HANN_SCALING,
    padding: bool = True,
    *,
    method: str | None = None,
) -> Tensor:
    """Filtered backprojection: ramp filter with ``window`` (see :mod:`ctpipe.ops.filters`), then
    backprojection with angle weight ``pi / n_angles``, so ``fbp(forward_project(f)) ~ f``."""
    freqs = filter_frequencies(geometry.n_detector, padding, dtype=sinogram.dtype, device=sinogram.device)
    response = window_values(window, freqs, frequency_scaling)
    return filtered_backprojection(sinogram, geometry, response, padding, method=method)
