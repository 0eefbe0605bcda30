"""ParallelBeamGeometry: LoDoPaB preset values, derived grids, serialisation, validation."""

import math

import numpy as np
import pytest

from ctpipe.ops.geometry import ParallelBeamGeometry


def test_lodopab_preset_values():
    g = ParallelBeamGeometry.lodopab()
    assert (g.n_pixels, g.n_angles, g.n_detector) == (362, 1000, 513)
    assert g.image_half_width == 0.13
    assert g.detector_half_width == pytest.approx(0.13 * math.sqrt(2.0), rel=1e-15)
    assert g.image_shape == (362, 362) and g.sinogram_shape == (1000, 513)


def test_angles_are_cell_midpoints():
    g = ParallelBeamGeometry.lodopab()
    np.testing.assert_allclose(g.angles, (np.arange(1000) + 0.5) * np.pi / 1000, rtol=0, atol=1e-15)


def test_pixel_and_detector_grids_are_symmetric_midpoints():
    g = ParallelBeamGeometry.lodopab().scaled(64, 60)
    np.testing.assert_allclose(g.pixel_centers, -g.pixel_centers[::-1], atol=1e-15)
    assert g.pixel_centers[0] == pytest.approx(-0.13 + 0.5 * g.pixel_size)
    np.testing.assert_allclose(g.detector_positions, -g.detector_positions[::-1], atol=1e-15)
    assert g.n_detector % 2 == 1 and g.detector_positions[g.n_detector // 2] == pytest.approx(0.0, abs=1e-15)


def test_scaled_full_size_is_lodopab():
    assert ParallelBeamGeometry.lodopab().scaled(362, 1000) == ParallelBeamGeometry.lodopab()


def test_scaled_keeps_domain_and_covers_diagonal():
    g = ParallelBeamGeometry.lodopab().scaled(64, 60)
    assert (g.n_pixels, g.n_angles) == (64, 60)
    assert g.image_half_width == 0.13 and g.detector_half_width == ParallelBeamGeometry.lodopab().detector_half_width
    assert g.n_detector * g.pixel_size >= 64 * math.sqrt(2.0) * g.pixel_size


def test_repr_is_a_constructor_call():
    assert repr(ParallelBeamGeometry.lodopab()) == "ParallelBeamGeometry.lodopab()"
    g = ParallelBeamGeometry(8, 6, 13, 1.0, 1.5)
    assert eval(repr(g), {"ParallelBeamGeometry": ParallelBeamGeometry}) == g


def test_dict_round_trip():
    for g in (ParallelBeamGeometry.lodopab(), ParallelBeamGeometry.lodopab().scaled(64, 60)):
        d = g.to_dict()
        assert d["type"] == "parallel_beam_2d"
        assert ParallelBeamGeometry.from_dict(d) == g


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_pixels=0, n_angles=6, n_detector=13, image_half_width=1.0, detector_half_width=1.5),
        dict(n_pixels=8, n_angles=-1, n_detector=13, image_half_width=1.0, detector_half_width=1.5),
        dict(n_pixels=8.5, n_angles=6, n_detector=13, image_half_width=1.0, detector_half_width=1.5),
        dict(n_pixels=8, n_angles=6, n_detector=13, image_half_width=0.0, detector_half_width=1.5),
        dict(n_pixels=8, n_angles=6, n_detector=13, image_half_width=1.0, detector_half_width=float("nan")),
    ],
)
def test_invalid_values_raise(kwargs):
    with pytest.raises(ValueError):
        ParallelBeamGeometry(**kwargs)


def test_from_dict_rejects_unknown_and_missing_keys():
    d = ParallelBeamGeometry.lodopab().to_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        ParallelBeamGeometry.from_dict({**d, "extra": 1})
    d.pop("n_angles")
    with pytest.raises(ValueError, match="missing keys"):
        ParallelBeamGeometry.from_dict(d)
    with pytest.raises(ValueError, match="not a parallel-beam"):
        ParallelBeamGeometry.from_dict({**ParallelBeamGeometry.lodopab().to_dict(), "type": "cone"})
