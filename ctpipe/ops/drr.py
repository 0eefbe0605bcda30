"""Digitally reconstructed radiographs (DRRs): CT (HU) -> attenuation -> dual-view line integrals.

Conventions
-----------
* **Volume axes.** ``mu_volume[b, 0, i, j, k]`` is the voxel at canonical **RAS** index ``(i, j, k)``:
  axis 2 (``i``) runs toward the patient's **Right**, axis 3 (``j``) toward **Anterior**, axis 4 (``k``)
  toward **Superior** -- exactly the array order nibabel's ``as_closest_canonical`` gives. The volume is
  centred on the isocentre: voxel ``n`` along an axis of ``N`` voxels with spacing ``s`` lies at
  ``(n - (N - 1) / 2) * s`` mm, and the voxels fill the box ``[-N s / 2, N s / 2]``.
* **Views.** ``"frontal"`` is an AP projection: rays along the anterior-posterior axis (source
  anterior, detector posterior). ``"lateral"`` is a left-lateral projection: rays along the
  left-right axis (source on the patient's right, detector on the left).
* **Image axes** follow radiographic display ("as if facing the patient"): row 0 is the most
  **superior** row in both views; in the frontal image column 0 is the patient's **right** (so the
  patient's left appears on the viewer's right); in the lateral image column 0 is **anterior**.
* **Units.** ``hu_to_mu`` returns linear attenuation per millimetre; ``render_drr`` returns line
  integrals ``p = integral of mu dl`` (dimensionless, mu x mm). ``drr_to_image`` maps them to the
  network input ``1 - exp(-gain * p)`` in ``[0, 1)``.

Discretisation: voxels are trilinearly interpolated between their centres and held constant
("border") in the half voxel next to the box faces, so a uniform box integrates to exactly
``mu x chord length``. The axis-aligned parallel case sums voxels exactly (``sum(mu) * spacing``) and
resamples the resulting projection bilinearly onto the detector grid (identity when the grids match);
the cone-beam case marches ``samples_per_voxel`` samples per voxel along each source-to-pixel ray
between its box entry and exit points (midpoint rule, ``grid_sample``). Everything is torch and
differentiable; it runs on whatever device the volume is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Linear attenuation of water and air at ~60 keV effective energy, per millimetre. These are the
# values LoDoPaB-CT used (20 1/m and 0.02 1/m; mu = HU * (mu_water - mu_air) / 1000 + mu_water).
MU_WATER_PER_MM = 0.02
MU_AIR_PER_MM = 2.0e-5
# Default gain of ``drr_to_image``: 1 - exp(-0.25 p) keeps a ~300 mm chest (p ~ 4-8) out of saturation.
DEFAULT_IMAGE_GAIN = 0.25
# X2CT-GAN's cone-beam distances (mm).
X2CT_SOURCE_TO_ISOCENTER_MM = 541.0
X2CT_SOURCE_TO_DETECTOR_MM = 949.0

View = Literal["frontal", "lateral"]
VIEWS: tuple[str, str] = ("frontal", "lateral")

# Per view: (depth axis, column axis) as RAS axis numbers 0=R, 1=A, 2=S. Rows always run along S
# (descending), columns descend along the column axis, the source sits at +depth.
_VIEW_AXES: dict[str, tuple[int, int]] = {"frontal": (1, 0), "lateral": (0, 1)}


@dataclass(frozen=True)
class DRRGeometry:
    """Detector and source placement shared by both views.

    Attributes:
        mode: ``"parallel"`` (rays parallel to the view axis) or ``"cone"`` (point source).
        detector_pixels: detector size in pixels (square).
        detector_size_mm: detector edge length in mm at the detector plane; ``None`` = fit the
            volume: the volume's field of view (times the isocentre magnification for cone beam).
        source_to_isocenter_mm / source_to_detector_mm: cone-beam distances (X2CT-GAN: 541 / 949 mm);
            ignored in parallel mode.
        samples_per_voxel: ray-marching density (cone beam or ``method="raymarch"``).
    """

    mode: Literal["parallel", "cone"] = "parallel"
    detector_pixels: int = 128
    detector_size_mm: float | None = None
    source_to_isocenter_mm: float = X2CT_SOURCE_TO_ISOCENTER_MM
    source_to_detector_mm: float = X2CT_SOURCE_TO_DETECTOR_MM
    samples_per_voxel: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("parallel", "cone"):
            raise ValueError(f"DRRGeometry.mode must be 'parallel' or 'cone', got {self.mode!r}")
        if not isinstance(self.detector_pixels, int) or self.detector_pixels < 1:
            raise ValueError(f"DRRGeometry.detector_pixels must be a positive int, got {self.detector_pixels!r}")
        if self.detector_size_mm is not None and not (math.isfinite(self.detector_size_mm) and self.detector_size_mm > 0):
            raise ValueError(f"DRRGeometry.detector_size_mm must be positive (or None to fit the volume), got {self.detector_size_mm!r}")
        if not 0 < self.source_to_isocenter_mm < self.source_to_detector_mm:
            raise ValueError(
                "DRRGeometry needs 0 < source_to_isocenter_mm < source_to_detector_mm, got "
                f"{self.source_to_isocenter_mm!r} and {self.source_to_detector_mm!r}"
            )
        if not self.samples_per_voxel > 0:
            raise ValueError(f"DRRGeometry.samples_per_voxel must be positive, got {self.samples_per_voxel!r}")

    # ---- presets -----------------------------------------------------------------------------------
    @classmethod
    def parallel(
        cls, detector_pixels: int = 128, detector_size_mm: float | None = None, samples_per_voxel: float = 2.0
    ) -> "DRRGeometry":
        return cls(
            mode="parallel",
            detector_pixels=detector_pixels,
            detector_size_mm=detector_size_mm,
            samples_per_voxel=samples_per_voxel,
        )

    @classmethod
    def cone_beam(
        cls,
        detector_pixels: int = 128,
        detector_size_mm: float | None = None,
        source_to_isocenter_mm: float = X2CT_SOURCE_TO_ISOCENTER_MM,
        source_to_detector_mm: float = X2CT_SOURCE_TO_DETECTOR_MM,
        samples_per_voxel: float = 2.0,
    ) -> "DRRGeometry":
        return cls(
            mode="cone",
            detector_pixels=detector_pixels,
            detector_size_mm=detector_size_mm,
            source_to_isocenter_mm=source_to_isocenter_mm,
            source_to_detector_mm=source_to_detector_mm,
            samples_per_voxel=samples_per_voxel,
        )

    # ---- derived -------------------------------------------------------------------------------------
    @property
    def magnification(self) -> float:
        """Detector-plane magnification of the isocentre plane (1 for parallel beam)."""
        if self.mode == "parallel":
            return 1.0
        return self.source_to_detector_mm / self.source_to_isocenter_mm

    def detector_extent_mm(self, fov_mm: float) -> float:
        """Detector edge length in mm for a volume whose (largest) transverse field of view is ``fov_mm``."""
        if self.detector_size_mm is not None:
            return float(self.detector_size_mm)
        return float(fov_mm) * self.magnification

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"type": "drr", **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DRRGeometry":
        data = dict(data)
        kind = data.pop("type", "drr")
        if kind != "drr":
            raise ValueError(f"not a DRR geometry dict: type={kind!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"bad DRRGeometry dict: unknown keys {sorted(unknown)}; valid keys are {sorted(names)}")
        return cls(**data)

    def __repr__(self) -> str:
        if self.mode == "parallel":
            args = [f"detector_pixels={self.detector_pixels!r}", f"detector_size_mm={self.detector_size_mm!r}"]
            ctor = "DRRGeometry.parallel"
        else:
            args = [
                f"detector_pixels={self.detector_pixels!r}",
                f"detector_size_mm={self.detector_size_mm!r}",
                f"source_to_isocenter_mm={self.source_to_isocenter_mm!r}",
                f"source_to_detector_mm={self.source_to_detector_mm!r}",
            ]
            ctor = "DRRGeometry.cone_beam"
        if self.samples_per_voxel != 2.0:
            args.append(f"samples_per_voxel={self.samples_per_voxel!r}")
        return f"{ctor}({', '.join(args)})"


# ---- attenuation -------------------------------------------------------------------------------------
def hu_to_mu(hu: Tensor, mu_water: float = MU_WATER_PER_MM, mu_air: float = MU_AIR_PER_MM) -> Tensor:
    """Linear attenuation per mm from Hounsfield units: ``mu_water + HU * (mu_water - mu_air) / 1000``.

    Values below zero (HU below about -1000) are clamped to 0.
    """
    return (mu_water + hu * ((mu_water - mu_air) / 1000.0)).clamp_min(0.0)


def drr_to_image(line_integral: Tensor, gain: float = DEFAULT_IMAGE_GAIN) -> Tensor:
    """Network input from line integrals: ``1 - exp(-gain * p)``, in ``[0, 1)``; 0 means no attenuation.

    Monotonic and invertible (``p = -log(1 - image) / gain``); the fraction of photons absorbed by a
    beam whose attenuation is scaled by ``gain``.
    """
    return -torch.expm1(-gain * line_integral.clamp_min(0.0))


# ---- helpers ---------------------------------------------------------------------------------------
def _spacing3(spacing_mm: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(spacing_mm, (int, float)):
        values = (float(spacing_mm),) * 3
    else:
        values = tuple(float(s) for s in spacing_mm)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"render_drr: spacing_mm must be a positive number or three positive numbers (R, A, S), got {spacing_mm!r}")
    return values  # type: ignore[return-value]


def _check_volume(mu_volume: Tensor) -> None:
    if not isinstance(mu_volume, Tensor) or mu_volume.dim() != 5 or mu_volume.shape[1] != 1:
        shape = tuple(mu_volume.shape) if isinstance(mu_volume, Tensor) else type(mu_volume).__name__
        raise ValueError(f"render_drr: mu_volume must be a tensor of shape (B, 1, D, H, W) in RAS order, got {shape}; use vol[None, None]")
    if not mu_volume.is_floating_point():
        raise TypeError(f"render_drr: mu_volume must be floating point, got {mu_volume.dtype}")


def _detector_coords(n: int, extent_mm: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Pixel-centre coordinates, **descending** (row 0 / column 0 at the positive end)."""
    pixel = extent_mm / n
    return extent_mm / 2.0 - (torch.arange(n, device=device, dtype=dtype) + 0.5) * pixel


def _normalised(coord: Tensor, half_extent: float) -> Tensor:
    """Physical mm -> grid_sample coordinate with ``align_corners=False`` (+-1 at the box faces)."""
    return coord / half_extent


# ---- parallel beam, exact axis sums ---------------------------------------------------------------
def _render_parallel_exact(mu: Tensor, spacing: tuple[float, float, float], geometry: DRRGeometry, view: str) -> Tensor:
    depth, col_axis = _VIEW_AXES[view]
    shape = mu.shape[2:]
    half = [shape[a] * spacing[a] / 2.0 for a in range(3)]
    projection = mu.sum(dim=2 + depth) * spacing[depth]  # (B, 1, remaining two RAS axes in order)
    remaining = [a for a in range(3) if a != depth]  # [col_axis, 2] in ascending order; S is last
    assert remaining == sorted([col_axis, 2])
    n = geometry.detector_pixels
    extent = geometry.detector_extent_mm(max(2 * half[col_axis], 2 * half[2]))
    rows = _detector_coords(n, extent, mu.device, mu.dtype)  # S, descending
    cols = _detector_coords(n, extent, mu.device, mu.dtype)  # column axis, descending
    row_grid, col_grid = torch.meshgrid(rows, cols, indexing="ij")
    # projection is (B, 1, H=col_axis, W=S): grid[..., 0] indexes W (S), grid[..., 1] indexes H.
    grid = torch.stack([_normalised(row_grid, half[2]), _normalised(col_grid, half[col_axis])], dim=-1)
    grid = grid.unsqueeze(0).expand(mu.shape[0], n, n, 2)
    image = F.grid_sample(projection, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (row_grid.abs() <= half[2]) & (col_grid.abs() <= half[col_axis])
    return image * inside.to(image.dtype)


# ---- ray marching (cone beam, or parallel for cross-checks) ---------------------------------------
def _ray_geometry(
    shape: Sequence[int], spacing: tuple[float, float, float], geometry: DRRGeometry, view: str, device: torch.device
) -> tuple[Tensor, Tensor, list[float]]:
    """Ray origins and unit directions in RAS mm, shape (n, n, 3), computed in float64."""
    depth, col_axis = _VIEW_AXES[view]
    half = [shape[a] * spacing[a] / 2.0 for a in range(3)]
    n = geometry.detector_pixels
    extent = geometry.detector_extent_mm(max(2 * half[col_axis], 2 * half[2]))
    rows = _detector_coords(n, extent, device, torch.float64)
    cols = _detector_coords(n, extent, device, torch.float64)
    row_grid, col_grid = torch.meshgrid(rows, cols, indexing="ij")
    pixel = torch.zeros(n, n, 3, dtype=torch.float64, device=device)
    pixel[..., 2] = row_grid
    pixel[..., col_axis] = col_grid
    if geometry.mode == "parallel":
        origin = pixel.clone()
        origin[..., depth] = 2.0 * sum(half)  # far outside the box on the source side
        direction = torch.zeros_like(pixel)
        direction[..., depth] = -1.0
        return origin, direction, half
    pixel[..., depth] = geometry.source_to_isocenter_mm - geometry.source_to_detector_mm
    origin = torch.zeros_like(pixel)
    origin[..., depth] = geometry.source_to_isocenter_mm
    direction = pixel - origin
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return origin, direction, half


def _box_intersection(origin: Tensor, direction: Tensor, half: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Entry/exit ray parameters for the box ``[-half, half]`` (slab method); exit <= entry means a miss."""
    half_t = torch.tensor(half, dtype=origin.dtype, device=origin.device)
    inv = 1.0 / torch.where(direction == 0, torch.full_like(direction, 1e-300), direction)
    t1 = (-half_t - origin) * inv
    t2 = (half_t - origin) * inv
    t_near = torch.minimum(t1, t2).amax(dim=-1)
    t_far = torch.maximum(t1, t2).amin(dim=-1)
    return t_near, t_far


def _render_raymarch(mu: Tensor, spacing: tuple[float, float, float], geometry: DRRGeometry, view: str, chunk: int = 16) -> Tensor:
    shape = tuple(mu.shape[2:])
    origin, direction, half = _ray_geometry(shape, spacing, geometry, view, mu.device)
    t_near, t_far = _box_intersection(origin, direction, half)
    length = (t_far - t_near).clamp_min(0.0)  # (n, n) chord length in mm
    longest_chord_vox = math.sqrt(sum(s * s for s in shape))
    n_samples = max(1, math.ceil(geometry.samples_per_voxel * longest_chord_vox))
    step = length / n_samples
    half_t = torch.tensor(half, dtype=torch.float64, device=mu.device)
    # grid_sample's last dim is (W, H, D) = (S, A, R): reverse the RAS order.
    batch, n = mu.shape[0], geometry.detector_pixels
    total = mu.new_zeros(batch, 1, n, n)
    for start in range(0, n_samples, chunk):
        k = torch.arange(start, min(start + chunk, n_samples), device=mu.device, dtype=torch.float64) + 0.5
        t = t_near[None] + k[:, None, None] * step[None]  # (c, n, n)
        points = origin[None] + t[..., None] * direction[None]  # (c, n, n, 3) RAS mm
        grid = (points / half_t).flip(-1).to(mu.dtype)
        grid = grid.unsqueeze(0).expand(batch, *grid.shape)
        samples = F.grid_sample(mu, grid, mode="bilinear", padding_mode="border", align_corners=False)
        total = total + samples.sum(dim=2)
    return total * step.to(mu.dtype)[None, None]


# ---- public entry point ----------------------------------------------------------------------------
def render_drr(
    mu_volume: Tensor,
    spacing_mm: float | Sequence[float],
    geometry: DRRGeometry,
    view: View,
    method: Literal["auto", "exact", "raymarch"] = "auto",
) -> Tensor:
    """Line integrals of ``mu_volume`` (per mm, RAS order, (B, 1, D, H, W)) through one view.

    Returns ``(B, 1, n, n)`` with ``n = geometry.detector_pixels`` in the image orientation described
    in the module docstring. ``method="auto"`` sums exactly for parallel beam and ray-marches for
    cone beam; ``"raymarch"`` forces ray marching (for cross-checks); ``"exact"`` needs parallel beam.
    """
    _check_volume(mu_volume)
    if view not in _VIEW_AXES:
        raise ValueError(f"render_drr: view must be one of {VIEWS}, got {view!r}")
    spacing = _spacing3(spacing_mm)
    if method not in ("auto", "exact", "raymarch"):
        raise ValueError(f"render_drr: method must be 'auto', 'exact' or 'raymarch', got {method!r}")
    if method == "exact" and geometry.mode != "parallel":
        raise ValueError("render_drr: method='exact' needs a parallel-beam geometry; use method='auto' for cone beam")
    if method == "raymarch" or (method == "auto" and geometry.mode == "cone"):
        return _render_raymarch(mu_volume, spacing, geometry, view)
    return _render_parallel_exact(mu_volume, spacing, geometry, view)


def render_dual_view(
    mu_volume: Tensor, spacing_mm: float | Sequence[float], geometry: DRRGeometry
) -> Tensor:
    """Both views stacked as channels: ``(B, 2, n, n)`` = (frontal, lateral) line integrals."""
    return torch.cat([render_drr(mu_volume, spacing_mm, geometry, view) for view in VIEWS], dim=1)
