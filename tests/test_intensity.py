"""The two HU conventions: each map pair is an exact inverse on its window, and the two differ where they should."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctpipe.intensity import (
    PIX2PIX_HU_WINDOW,
    XRAY2CT_HU_WINDOW,
    hu_to_symmetric_unit,
    hu_to_unit_interval,
    symmetric_unit_to_hu,
    unit_interval_to_hu,
)

CONVENTIONS = {
    "xray2ct": (hu_to_unit_interval, unit_interval_to_hu, XRAY2CT_HU_WINDOW, (0.0, 1.0)),
    "pix2pix": (hu_to_symmetric_unit, symmetric_unit_to_hu, PIX2PIX_HU_WINDOW, (-1.0, 1.0)),
}


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_each_convention_is_an_exact_inverse_on_its_window(name: str) -> None:
    forward, inverse, window, (u_lo, u_hi) = CONVENTIONS[name]
    hu = np.linspace(window[0], window[1], 4097)  # float64: round-off far below 1e-9 HU
    unit = forward(hu, window)
    assert unit.min() == u_lo and unit.max() == u_hi  # the window's ends land on the range's ends
    np.testing.assert_allclose(inverse(unit, window), hu, rtol=0, atol=1e-9)
    units = np.linspace(u_lo, u_hi, 1001)
    np.testing.assert_allclose(forward(inverse(units, window), window), units, rtol=0, atol=1e-12)
    # HU outside the window clip to its ends; values outside the unit range clip back to the window's ends
    assert list(forward(np.array([window[0] - 500.0, window[1] + 500.0]), window)) == [u_lo, u_hi]
    assert list(inverse(np.array([u_lo - 0.5, u_hi + 0.5]), window)) == list(window)
    # torch tensors keep their kind and agree with numpy
    t = torch.from_numpy(hu)
    assert isinstance(forward(t, window), torch.Tensor)
    np.testing.assert_allclose(forward(t, window).numpy(), unit, rtol=0, atol=1e-12)


def test_the_two_conventions_differ_where_they_should() -> None:
    assert XRAY2CT_HU_WINDOW == (-1024.0, 1476.0) and PIX2PIX_HU_WINDOW == (-1024.0, 3071.0)
    # the same HU value lands on different network units: water (0 HU) and air (-1024 HU)
    water = np.array([0.0])
    assert hu_to_unit_interval(water)[0] == pytest.approx(1024.0 / 2500.0)
    assert hu_to_symmetric_unit(water)[0] == pytest.approx(2.0 * 1024.0 / 4095.0 - 1.0)
    assert hu_to_unit_interval(np.array([-1024.0]))[0] == 0.0 and hu_to_symmetric_unit(np.array([-1024.0]))[0] == -1.0
    # the same network value means different HU: reading a [0, 1] volume with the pix2pix map is off by far
    half = np.array([0.5])
    assert unit_interval_to_hu(half)[0] == pytest.approx(226.0)
    assert symmetric_unit_to_hu(half)[0] == pytest.approx(2047.25)
    unit = hu_to_unit_interval(np.linspace(-1024.0, 1476.0, 11))
    assert np.abs(symmetric_unit_to_hu(unit) - unit_interval_to_hu(unit)).max() > 1000.0
    # bone at 2000 HU: inside the pix2pix window, clipped by the X-ray -> CT window
    bone = np.array([2000.0])
    assert unit_interval_to_hu(hu_to_unit_interval(bone))[0] == 1476.0
    assert symmetric_unit_to_hu(hu_to_symmetric_unit(bone))[0] == pytest.approx(2000.0)


@pytest.mark.parametrize("window", [(100.0, 100.0), (0.0, float("nan")), (5.0, -5.0)])
def test_bad_windows_are_refused_with_the_fix(window: tuple[float, float]) -> None:
    for forward, inverse, _, _ in CONVENTIONS.values():
        for fn in (forward, inverse):
            with pytest.raises(ValueError, match="high > low"):
                fn(np.zeros(2), window)
