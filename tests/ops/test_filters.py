"""Windows (ODL convention), the band-limited ramp, and the learnable WindowII."""

import math

import numpy as np
import pytest
import torch

from ctpipe.ops.filters import (
    WINDOWS,
    FixedWindow,
    WindowII,
    filter_frequencies,
    padded_length,
    ramp_filter,
    ramp_response,
    window_values,
)

F = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_windows_are_one_at_zero_and_zero_above_scaling(name):
    values = window_values(name, F, 0.6)
    assert values[0].item() == pytest.approx(1.0)
    assert torch.all(values[F > 0.6] == 0)
    assert torch.all(values[F <= 0.6] > 0.0)


def test_window_formulas():
    f = torch.tensor([0.5], dtype=torch.float64)
    assert window_values("hann", f, 1.0).item() == pytest.approx(0.5)
    assert window_values("cosine", f, 1.0).item() == pytest.approx(math.cos(math.pi / 4))
    assert window_values("hamming", f, 1.0).item() == pytest.approx(0.54)
    assert window_values("shepp-logan", f, 1.0).item() == pytest.approx(float(np.sinc(0.25)))
    assert window_values("ram-lak", f, 1.0).item() == 1.0
    assert window_values("hann", -f, 1.0).item() == pytest.approx(0.5)  # evaluated on |f|


def test_unknown_window_lists_valid_names():
    with pytest.raises(ValueError, match="hann"):
        window_values("gaussian", F)
    with pytest.raises(ValueError, match="ram-lak"):
        FixedWindow("hanning")
    with pytest.raises(ValueError, match="frequency_scaling"):
        window_values("hann", F, 0.0)


def test_padding_and_frequencies():
    assert padded_length(513) == 2048 and padded_length(512) == 1024 and padded_length(91) == 256
    assert padded_length(91, padding=False) == 91
    freqs = filter_frequencies(513)
    assert freqs.shape == (1025,) and freqs[0] == 0 and freqs[-1] == 1.0


def test_ramp_response_is_the_continuous_ramp_away_from_dc():
    ds = 0.002
    response = ramp_response(91, ds)
    expected = filter_frequencies(91) / (2 * ds)
    assert response[0] > 0  # no DC hole (Kak-Slaney)
    np.testing.assert_allclose(response[20:], expected[20:], rtol=0.01)
    assert response[-1].item() == pytest.approx(1 / (2 * ds), rel=5e-3)


def test_ramp_filter_of_constant_has_no_dc_bias_inside():
    """The ramp of a wide constant profile is ~0 well inside it (a DC hole would make it negative)."""
    ds = 1.0
    profile = torch.zeros(1, 257, dtype=torch.float64)
    profile[0, 28:229] = 1.0
    filtered = ramp_filter(profile, None, detector_spacing=ds)[0]
    assert filtered[128].abs() < 2e-3


def test_ramp_filter_rejects_wrong_window_shape():
    with pytest.raises(ValueError, match="filter_frequencies"):
        ramp_filter(torch.zeros(1, 33), torch.ones(10), detector_spacing=1.0)


def test_fixed_window_has_no_parameters():
    window = FixedWindow("hann", 0.641)
    assert list(window.parameters()) == []
    torch.testing.assert_close(window(F), window_values("hann", F, 0.641))


def test_window_ii_initialises_to_hann_0641():
    window = WindowII()
    torch.testing.assert_close(window(F), window_values("hann", F, 0.641), rtol=0, atol=1e-12)
    assert window.cutoff.item() == 0.641


def test_window_ii_parameters_get_gradients():
    window = WindowII(n_terms=6)
    target = window_values("hamming", F, 0.8)
    loss = ((window(F) - target) ** 2).sum()
    loss.backward()
    assert window.coefficients.grad is not None and torch.all(window.coefficients.grad != 0)
    assert window.cutoff_raw.grad is not None and window.cutoff_raw.grad != 0


def test_window_ii_trains_towards_a_target():
    window = WindowII(n_terms=6)
    target = window_values("hamming", F, 0.8)
    optimiser = torch.optim.Adam(window.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        optimiser.zero_grad()
        loss = ((window(F) - target) ** 2).mean()
        first = loss.item() if first is None else first
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.2 * first
