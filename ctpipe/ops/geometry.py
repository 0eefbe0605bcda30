"""Immutable acquisition geometries.

Conventions (ODL's, as LoDoPaB stores its data):

* an image array ``img[a, b]`` holds f at ``(x_a, y_b)``: first axis x, second axis y, both ascending,
  pixel centres at ``-extent + (k + 1/2) * pixel_size``;
* a sinogram ``sino[i, j]`` is the line integral of f along ``x cos(theta_i) + y sin(theta_i) = s_j``,
  with ``theta_i = (i + 1/2) * pi / n_angles`` and ``s_j`` ascending detector-cell midpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

LODOPAB_IMAGE_HALF_WIDTH_M = 0.13
LODOPAB_PIXELS = 362
LODOPAB_ANGLES = 1000
LODOPAB_DETECTORS = 513


def _odd_detector_count(n_pixels: int) -> int:
    """Smallest odd detector count covering the image diagonal (513 for 362 pixels)."""
    return 2 * math.ceil(n_pixels * math.sqrt(2.0) / 2.0) + 1


@dataclass(frozen=True)
class ParallelBeamGeometry:
    """2D parallel-beam geometry on a square image domain ``[-image_half_width, image_half_width]^2``.

    Angles are the midpoints of ``n_angles`` equal cells of ``[0, pi)``; detector cells are the
    midpoints of ``n_detector`` equal cells of ``[-detector_half_width, detector_half_width]``.
    """

    n_pixels: int
    n_angles: int
    n_detector: int
    image_half_width: float
    detector_half_width: float

    def __post_init__(self) -> None:
        for name in ("n_pixels", "n_angles", "n_detector"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ParallelBeamGeometry.{name} must be a positive integer, got {value!r}")
        for name in ("image_half_width", "detector_half_width"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"ParallelBeamGeometry.{name} must be a positive finite length in metres, got {value!r}")

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def lodopab(cls) -> "ParallelBeamGeometry":
        """The LoDoPaB-CT geometry: 362^2 px on [-0.13, 0.13]^2 m, 1000 angles, 513 bins over +-0.13*sqrt(2) m."""
        return cls(
            n_pixels=LODOPAB_PIXELS,
            n_angles=LODOPAB_ANGLES,
            n_detector=LODOPAB_DETECTORS,
            image_half_width=LODOPAB_IMAGE_HALF_WIDTH_M,
            detector_half_width=LODOPAB_IMAGE_HALF_WIDTH_M * math.sqrt(2.0),
        )

    def scaled(self, n_pixels: int, n_angles: int) -> "ParallelBeamGeometry":
        """Same physical domain and detector width, with fewer pixels/angles (for tests and demos).

        The detector count is the smallest odd number covering the image diagonal, so
        ``lodopab().scaled(362, 1000) == lodopab()``.
        """
        return ParallelBeamGeometry(
            n_pixels=int(n_pixels),
            n_angles=int(n_angles),
            n_detector=_odd_detector_count(int(n_pixels)),
            image_half_width=self.image_half_width,
            detector_half_width=self.detector_half_width,
        )

    def refined(self, factor: int) -> "ParallelBeamGeometry":
        """The same detector and angles with an image grid ``factor`` times finer (for simulation)."""
        return ParallelBeamGeometry(
            n_pixels=self.n_pixels * int(factor),
            n_angles=self.n_angles,
            n_detector=self.n_detector,
            image_half_width=self.image_half_width,
            detector_half_width=self.detector_half_width,
        )

    # ---- derived quantities ----------------------------------------------------------------------
    @property
    def pixel_size(self) -> float:
        return 2.0 * self.image_half_width / self.n_pixels

    @property
    def detector_spacing(self) -> float:
        return 2.0 * self.detector_half_width / self.n_detector

    @property
    def angle_step(self) -> float:
        return math.pi / self.n_angles

    @property
    def angles(self) -> np.ndarray:
        """Projection angles in radians, ``(i + 1/2) * pi / n_angles``."""
        return (np.arange(self.n_angles, dtype=np.float64) + 0.5) * self.angle_step

    @property
    def detector_positions(self) -> np.ndarray:
        """Detector-cell midpoints ``s_j`` in metres, ascending."""
        return -self.detector_half_width + (np.arange(self.n_detector, dtype=np.float64) + 0.5) * self.detector_spacing

    @property
    def pixel_centers(self) -> np.ndarray:
        """Pixel-centre coordinates (same along x and y) in metres, ascending."""
        return -self.image_half_width + (np.arange(self.n_pixels, dtype=np.float64) + 0.5) * self.pixel_size

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.n_pixels, self.n_pixels)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_angles, self.n_detector)

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"type": "parallel_beam_2d", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ParallelBeamGeometry":
        data = dict(data)
        kind = data.pop("type", "parallel_beam_2d")
        if kind != "parallel_beam_2d":
            raise ValueError(f"not a parallel-beam geometry: type={kind!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        missing = names - set(data)
        if unknown or missing:
            raise ValueError(
                f"bad geometry dict: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                f"expected exactly {sorted(names)}"
            )
        return cls(**{k: (int(v) if k.startswith("n_") else float(v)) for k, v in data.items()})

    def __repr__(self) -> str:
        if self == ParallelBeamGeometry.lodopab():
            return "ParallelBeamGeometry.lodopab()"
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"ParallelBeamGeometry({args})"
