"""Ramp filter and FBP windows (ODL's ``fbp_op`` convention).

Frequencies are *normalised*: ``f = |nu| / nu_Nyquist`` in ``[0, 1]``, where ``nu`` is the spatial
frequency along the detector (cycles per metre) and ``nu_Nyquist = 1 / (2 * detector_spacing)``.
A window ``w(f)`` with frequency scaling ``fs`` in ``(0, 1]`` is evaluated on ``|f|`` and is zero for
``|f| > fs``:

=============  ====================================
ram-lak        ``1``
shepp-logan    ``sinc(f / (2 fs))`` (``np.sinc``: ``sin(pi x) / (pi x)``)
cosine         ``cos(pi f / (2 fs))``
hamming        ``0.54 + 0.46 cos(pi f / fs)``
hann           ``cos^2(pi f / (2 fs))``
=============  ====================================

The ramp is the band-limited ramp of Kak & Slaney (ch. 3, eq. 61): the DFT of the discrete kernel
``h[0] = 1/(4 ds^2)``, ``h[n] = -1/(pi n ds)^2`` (n odd), ``0`` (n even), times ``ds``. At the rfft
frequencies it equals the continuous ramp ``|nu| = f / (2 ds)`` except for a small positive value near
``f = 0``; unlike the naively sampled ``|nu|`` (zero at DC) it has no DC bias, so the reconstructed
mean is right. The filtered projection ``irfft(rfft(q, L) * ramp * w)`` approximates ``q * h`` with
``h^(nu) = |nu|``; backprojecting it with angle weight ``pi / n_angles`` gives ``f`` (see
:func:`ctpipe.ops.projector.fbp`). Zero padding to ``L`` = the next power of two ``>= 2 D`` avoids
wrap-around of the circular convolution.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

# The LoDoPaB reference FBP (Leuschner et al. 2021): Hann window, frequency scaling 0.641.
LODOPAB_HANN_SCALING = 0.641

WindowFunction = Callable[[Tensor, float], Tensor]


def _ram_lak(f: Tensor, fs: float) -> Tensor:
    return torch.ones_like(f)


def _shepp_logan(f: Tensor, fs: float) -> Tensor:
    return torch.sinc(f / (2.0 * fs))


def _cosine(f: Tensor, fs: float) -> Tensor:
    return torch.cos(math.pi * f / (2.0 * fs))


def _hamming(f: Tensor, fs: float) -> Tensor:
    return 0.54 + 0.46 * torch.cos(math.pi * f / fs)


def _hann(f: Tensor, fs: float) -> Tensor:
    return torch.cos(math.pi * f / (2.0 * fs)) ** 2


WINDOWS: dict[str, WindowFunction] = {
    "ram-lak": _ram_lak,
    "shepp-logan": _shepp_logan,
    "cosine": _cosine,
    "hamming": _hamming,
    "hann": _hann,
}


def _check_window_name(name: str) -> WindowFunction:
    key = name.lower()
    if key not in WINDOWS:
        raise ValueError(f"unknown FBP window {name!r}; valid names: {sorted(WINDOWS)}")
    return WINDOWS[key]


def _check_scaling(frequency_scaling: float) -> float:
    fs = float(frequency_scaling)
    if not (0.0 < fs <= 1.0):
        raise ValueError(f"frequency_scaling must lie in (0, 1] (fraction of Nyquist), got {frequency_scaling!r}")
    return fs


def window_values(name: str, freqs: Tensor, frequency_scaling: float = 1.0) -> Tensor:
    """Window ``name`` at normalised frequencies ``freqs`` (evaluated on ``|freqs|``, zero above the scaling)."""
    function = _check_window_name(name)
    fs = _check_scaling(frequency_scaling)
    f = freqs.abs()
    return torch.where(f <= fs, function(f, fs), torch.zeros_like(f))


def padded_length(n_detector: int, padding: bool = True) -> int:
    """FFT length: the next power of two ``>= 2 * n_detector`` with padding, else ``n_detector``."""
    if not padding:
        return int(n_detector)
    return 1 << (2 * int(n_detector) - 1).bit_length()


def filter_frequencies(
    n_detector: int, padding: bool = True, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    """Normalised frequencies ``f_k = 2 k / L`` (``k = 0 .. L//2``, ``L`` the FFT length) of the rfft bins."""
    length = padded_length(n_detector, padding)
    return torch.arange(length // 2 + 1, dtype=dtype, device=device) * (2.0 / length)


def ramp_response(
    n_detector: int,
    detector_spacing: float,
    padding: bool = True,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The band-limited ramp at the rfft bins (shape ``(L//2+1,)``), in 1/metre (see the module docstring)."""
    length = padded_length(n_detector, padding)
    k = torch.arange(length, dtype=torch.float64, device=device)
    n = torch.minimum(k, length - k)  # circular distance to sample 0
    odd = torch.remainder(n, 2.0) == 1.0
    kernel = torch.where(odd, -1.0 / (math.pi * n.clamp(min=1.0)) ** 2, torch.zeros_like(n))
    kernel[0] = 0.25
    return (torch.fft.rfft(kernel).real / float(detector_spacing)).to(dtype)


def ramp_filter(
    sinogram: Tensor,
    window_response: Tensor | None = None,
    padding: bool = True,
    *,
    detector_spacing: float,
) -> Tensor:
    """Ramp-filter ``sinogram`` along its last axis (the detector), optionally apodised by a window.

    ``window_response`` holds the window at :func:`filter_frequencies` ``(D, padding)`` (shape ``(L//2+1,)``);
    ``None`` means Ram-Lak. ``detector_spacing`` is in metres, so the result is in ``sinogram`` units / m.
    """
    if not (math.isfinite(detector_spacing) and detector_spacing > 0):
        raise ValueError(f"ramp_filter: detector_spacing must be a positive length in metres, got {detector_spacing!r}")
    n_det = sinogram.shape[-1]
    length = padded_length(n_det, padding)
    response = ramp_response(n_det, detector_spacing, padding, dtype=sinogram.dtype, device=sinogram.device)
    if window_response is not None:
        if window_response.shape != response.shape:
            raise ValueError(
                f"ramp_filter: window_response has shape {tuple(window_response.shape)}, expected "
                f"{tuple(response.shape)} (the window at filter_frequencies({n_det}, padding={padding}))"
            )
        response = response * window_response.to(dtype=sinogram.dtype, device=sinogram.device)
    spectrum = torch.fft.rfft(sinogram, n=length, dim=-1)
    return torch.fft.irfft(spectrum * response, n=length, dim=-1)[..., :n_det]


class FixedWindow(nn.Module):
    """A named window (see :data:`WINDOWS`) with a fixed frequency scaling; no parameters."""

    def __init__(self, name: str = "hann", frequency_scaling: float = LODOPAB_HANN_SCALING) -> None:
        super().__init__()
        _check_window_name(name)
        self.name = name.lower()
        self.frequency_scaling = _check_scaling(frequency_scaling)

    def forward(self, freqs: Tensor) -> Tensor:
        return window_values(self.name, freqs, self.frequency_scaling)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, frequency_scaling={self.frequency_scaling}"


class WindowII(nn.Module):
    """Learnable smooth window ``w(f) = sum_k a_k cos(k pi f / fc)`` on ``[0, fc]``, zero above.

    The cutoff ``fc`` is a parameter, clamped to ``[MIN_CUTOFF, 1]`` when used. Initialised to Hann with scaling
    ``fs``: ``cos^2(pi f / (2 fs)) = 1/2 + 1/2 cos(pi f / fs)``, i.e. ``a_0 = a_1 = 1/2``, others 0,
    ``fc = fs``. Gradients reach the coefficients and the cutoff (through the cosines' argument).
    """

    MIN_CUTOFF = 0.05

    def __init__(self, n_terms: int = 8, frequency_scaling: float = LODOPAB_HANN_SCALING) -> None:
        super().__init__()
        if n_terms < 2:
            raise ValueError(f"WindowII needs n_terms >= 2 to represent Hann, got {n_terms}")
        fs = _check_scaling(frequency_scaling)
        coefficients = torch.zeros(n_terms, dtype=torch.float64)
        coefficients[:2] = 0.5
        self.coefficients = nn.Parameter(coefficients)
        self.cutoff_raw = nn.Parameter(torch.tensor(fs, dtype=torch.float64))

    @property
    def cutoff(self) -> Tensor:
        """The effective cutoff ``fc`` (normalised frequency)."""
        return self.cutoff_raw.clamp(self.MIN_CUTOFF, 1.0)

    def forward(self, freqs: Tensor) -> Tensor:
        f = freqs.abs().to(self.coefficients.dtype)
        cutoff = self.cutoff
        k = torch.arange(self.coefficients.shape[0], dtype=f.dtype, device=f.device)
        cosines = torch.cos(math.pi * f[..., None] * k / cutoff)
        response = (cosines * self.coefficients).sum(-1)
        return torch.where(f <= cutoff, response, torch.zeros_like(response)).to(freqs.dtype)
