"""Random 2D chest-like phantoms in LoDoPaB's normalised attenuation units (numpy, seedable).

A *patient* is an :class:`Anatomy`: a body ellipse of soft tissue with a fat rim, two lungs (low density
with vessel texture), organ ellipses of varying density, a spine and ribs (bone). Its *slices* are small
variations of it (the ellipses swell/shrink and drift with the slice position, the texture is redrawn),
so slices of one patient are strongly correlated and dataset splits must be by patient.

Values are built in HU and mapped like LoDoPaB: ``mu = HU * (20 - 0.02) / 1000 + 20`` (1/m), divided by
``MU_MAX`` and clipped to [0, 1]. Image arrays follow :mod:`ctpipe.ops.geometry`: ``img[a, b]`` is the
value at ``(x_a, y_b)`` on pixel centres of ``[-1, 1]^2`` (normalised coordinates of the image domain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MU_WATER = 20.0  # 1/m
MU_AIR = 0.02  # 1/m
MU_MAX = 81.35858  # 1/m, the attenuation of 3071 HU: LoDoPaB's normalisation constant
HU_AIR = -1000.0


def hu_to_mu(hu: np.ndarray | float) -> np.ndarray:
    """Linear attenuation in 1/m from Hounsfield units (LoDoPaB's mapping)."""
    return np.asarray(hu, dtype=np.float64) * (MU_WATER - MU_AIR) / 1000.0 + MU_WATER


def hu_to_normalised(hu: np.ndarray | float) -> np.ndarray:
    """``mu(HU) / MU_MAX`` clipped to [0, 1]: LoDoPaB's ground-truth units."""
    return np.clip(hu_to_mu(hu) / MU_MAX, 0.0, 1.0)


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in normalised coordinates with a value (HU, or an additive HU offset)."""

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float
    value: float

    def mask(self, x: np.ndarray, y: np.ndarray, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - (self.cx + shift[0]), y - (self.cy + shift[1])
        u, v = (c * dx + s * dy) / (self.ax * scale), (-s * dx + c * dy) / (self.ay * scale)
        return u * u + v * v <= 1.0


@dataclass(frozen=True)
class Anatomy:
    """One patient's base anatomy; :func:`render_slice` draws its slices."""

    body: Ellipse
    fat_thickness: float
    lungs: tuple[Ellipse, ...]
    organs: tuple[Ellipse, ...]
    bones: tuple[Ellipse, ...]
    texture_hu: float
    lung_texture_hu: float
    drift: tuple[float, float]  # per-unit-slice-position translation of the inner structures
    swell: float  # relative size change of the inner structures over the slice range


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _random_lungs(rng: np.random.Generator, body: Ellipse) -> tuple[Ellipse, ...]:
    lungs = []
    for side in (-1.0, 1.0):
        lungs.append(Ellipse(
            cx=body.cx + side * body.ax * _uniform(rng, 0.38, 0.5), cy=body.cy + body.ay * _uniform(rng, -0.15, 0.1),
            ax=body.ax * _uniform(rng, 0.25, 0.36), ay=body.ay * _uniform(rng, 0.45, 0.65),
            angle=side * _uniform(rng, 0.0, 0.3), value=_uniform(rng, -900.0, -780.0)))
    return tuple(lungs)


def _random_organs(rng: np.random.Generator, body: Ellipse) -> tuple[Ellipse, ...]:
    organs = []
    for _ in range(int(rng.integers(3, 8))):
        organs.append(Ellipse(
            cx=body.cx + body.ax * _uniform(rng, -0.5, 0.5), cy=body.cy + body.ay * _uniform(rng, -0.5, 0.5),
            ax=body.ax * _uniform(rng, 0.06, 0.25), ay=body.ay * _uniform(rng, 0.06, 0.25),
            angle=_uniform(rng, 0.0, math.pi), value=_uniform(rng, -120.0, 90.0)))
    return tuple(organs)


def _random_bones(rng: np.random.Generator, body: Ellipse) -> tuple[Ellipse, ...]:
    spine_y = body.cy - body.ay * _uniform(rng, 0.6, 0.72)
    bones = [Ellipse(body.cx, spine_y, body.ax * 0.12, body.ay * 0.14, 0.0, _uniform(rng, 500.0, 900.0)),
             Ellipse(body.cx, spine_y, body.ax * 0.07, body.ay * 0.08, 0.0, _uniform(rng, 150.0, 300.0))]
    n_ribs = int(rng.integers(8, 16))
    for k in range(n_ribs):
        phi = math.pi * (-0.3 + 1.6 * (k + 0.5) / n_ribs) + _uniform(rng, -0.05, 0.05)  # all round but the spine
        rx, ry = math.cos(phi) * body.ax * 0.9, math.sin(phi) * body.ay * 0.9
        bones.append(Ellipse(body.cx + rx, body.cy + ry, body.ax * 0.035, body.ay * 0.05, phi,
                             _uniform(rng, 700.0, 1600.0)))
    return tuple(bones)


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's base anatomy."""
    body = Ellipse(cx=_uniform(rng, -0.05, 0.05), cy=_uniform(rng, -0.05, 0.05), ax=_uniform(rng, 0.72, 0.9),
                   ay=_uniform(rng, 0.5, 0.68), angle=_uniform(rng, -0.1, 0.1), value=_uniform(rng, 20.0, 60.0))
    return Anatomy(
        body=body, fat_thickness=_uniform(rng, 0.02, 0.07), lungs=_random_lungs(rng, body),
        organs=_random_organs(rng, body), bones=_random_bones(rng, body), texture_hu=_uniform(rng, 10.0, 30.0),
        lung_texture_hu=_uniform(rng, 40.0, 120.0), drift=(_uniform(rng, -0.03, 0.03), _uniform(rng, -0.03, 0.03)),
        swell=_uniform(rng, 0.05, 0.2))


def normalised_grid(n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x[a, b], y[a, b])`` of ``[-1, 1]^2`` (first axis x, second y)."""
    centres = -1.0 + (np.arange(n_pixels) + 0.5) * (2.0 / n_pixels)
    return np.meshgrid(centres, centres, indexing="ij")


def smooth_texture(rng: np.random.Generator, n_pixels: int, correlation: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``correlation`` (normalised units)."""
    noise = rng.standard_normal((n_pixels, n_pixels))
    freqs = np.fft.fftfreq(n_pixels, d=2.0 / n_pixels)
    f2 = freqs[:, None] ** 2 + freqs[None, :] ** 2
    field = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2.0 * (math.pi * correlation) ** 2 * f2)).real
    std = field.std()
    return field / std if std > 0 else field


def render_slice(anatomy: Anatomy, n_pixels: int, position: float, rng: np.random.Generator) -> np.ndarray:
    """One slice of ``anatomy`` in HU at slice ``position`` in [-1, 1]; ``rng`` draws its texture."""
    x, y = normalised_grid(n_pixels)
    scale = 1.0 + anatomy.swell * math.cos(math.pi * position) * 0.5
    shift = (anatomy.drift[0] * position, anatomy.drift[1] * position)
    hu = np.full((n_pixels, n_pixels), HU_AIR)
    body = anatomy.body.mask(x, y)
    hu[body] = -100.0  # fat rim
    inner = Ellipse(anatomy.body.cx, anatomy.body.cy, anatomy.body.ax - anatomy.fat_thickness,
                    anatomy.body.ay - anatomy.fat_thickness, anatomy.body.angle, anatomy.body.value)
    inner_mask = inner.mask(x, y)
    hu[inner_mask] = inner.value + anatomy.texture_hu * smooth_texture(rng, n_pixels, 0.04)[inner_mask]
    for organ in anatomy.organs:
        hu[organ.mask(x, y, scale, shift) & inner_mask] += organ.value
    lung_texture = anatomy.lung_texture_hu * np.abs(smooth_texture(rng, n_pixels, 0.015))
    for lung in anatomy.lungs:
        mask = lung.mask(x, y, scale, shift) & inner_mask
        hu[mask] = lung.value + lung_texture[mask]
    for bone in anatomy.bones:
        hu[bone.mask(x, y, 1.0, shift) & body] = bone.value
    return hu


def random_patient_slices(rng: np.random.Generator, n_slices: int, n_pixels: int) -> np.ndarray:
    """``(n_slices, n_pixels, n_pixels)`` normalised slices of one random patient (values in [0, 1])."""
    anatomy = random_anatomy(rng)
    positions = np.linspace(-1.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)
    return np.stack([hu_to_normalised(render_slice(anatomy, n_pixels, float(p), rng)) for p in positions])
