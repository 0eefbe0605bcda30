"""Forward projection / backprojection (exact adjoint pair) and FBP, against analytic values and skimage."""

import math

import numpy as np
import pytest
import torch

from ctpipe.ops import ParallelBeamGeometry, backproject, fbp, forward_project
from ctpipe.ops import projector

SMALL = ParallelBeamGeometry.lodopab().scaled(64, 60)


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    data_range = reference.max() - reference.min()
    return float(10 * np.log10(data_range**2 / np.mean((image - reference) ** 2)))


def _grid(geometry: ParallelBeamGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.as_tensor(geometry.pixel_centers)
    return torch.meshgrid(c, c, indexing="ij")  # X[a, b] = x_a, Y[a, b] = y_b


# ---- shapes and errors ----------------------------------------------------------------------------
def test_shapes():
    x = torch.rand(2, 1, 64, 64)
    y = forward_project(x, SMALL)
    assert y.shape == (2, 1, 60, SMALL.n_detector) and y.dtype == torch.float32
    assert backproject(y, SMALL).shape == (2, 1, 64, 64)
    assert fbp(y, SMALL).shape == (2, 1, 64, 64)


@pytest.mark.parametrize("shape", [(64, 64), (2, 64, 64), (2, 2, 64, 64), (2, 1, 63, 64)])
def test_wrong_image_shape_names_the_expected_one(shape):
    with pytest.raises(ValueError, match=r"\(B, 1, 64, 64\)"):
        forward_project(torch.zeros(shape), SMALL)


def test_wrong_sinogram_shape_names_the_expected_one():
    with pytest.raises(ValueError, match=rf"\(B, 1, 60, {SMALL.n_detector}\)"):
        backproject(torch.zeros(60, SMALL.n_detector), SMALL)
    with pytest.raises(ValueError, match="fbp"):
        fbp(torch.zeros(1, 1, 59, SMALL.n_detector), SMALL)


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="float32 or float64"):
        forward_project(torch.zeros(1, 1, 64, 64, dtype=torch.int64), SMALL)


# ---- adjointness and autograd ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_adjoint_identity(dtype, rtol):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 64, 64, generator=gen, dtype=dtype)
    y = torch.randn(3, 1, 60, SMALL.n_detector, generator=gen, dtype=dtype)
    lhs = (forward_project(x, SMALL) * y).sum().item()
    rhs = (x * backproject(y, SMALL)).sum().item()
    assert abs(lhs - rhs) <= rtol * abs(lhs)


def test_adjoint_identity_with_tiny_chunks(monkeypatch):
    """Chunking over angles changes nothing (several chunks, last one partial)."""
    reference = forward_project(torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)), SMALL)
    monkeypatch.setattr(projector, "CHUNK_BUDGET_ELEMENTS", 7 * 64 * 64)
    assert projector._chunk_size(SMALL) == 7
    again = forward_project(torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)), SMALL)
    torch.testing.assert_close(again, reference)


def test_gradcheck_tiny_geometry():
    tiny = ParallelBeamGeometry(n_pixels=8, n_angles=6, n_detector=13, image_half_width=1.0, detector_half_width=1.5)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 1, 6, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: forward_project(t, tiny), (x,))
    assert torch.autograd.gradcheck(lambda t: backproject(t, tiny), (y,))


def test_gradient_of_forward_is_backprojection():
    x = torch.rand(1, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 1, 60, SMALL.n_detector, dtype=torch.float64)
    (forward_project(x, SMALL) * y).sum().backward()
    torch.testing.assert_close(x.grad, backproject(y, SMALL))


def test_batch_entries_are_independent():
    x = torch.rand(3, 1, 64, 64, dtype=torch.float64)
    together = forward_project(x, SMALL)
    alone = torch.cat([forward_project(x[i : i + 1], SMALL) for i in range(3)])
    torch.testing.assert_close(together, alone)


# ---- physics: line integrals and orientation --------------------------------------------------------
def test_disc_projects_to_chord_length():
    geometry = ParallelBeamGeometry.lodopab().scaled(128, 12)
    X, Y = _grid(geometry)
    r = 0.06
    disc = ((X**2 + Y**2) <= r**2).double()[None, None]
    sino = forward_project(disc, geometry)[0, 0]
    s = torch.as_tensor(geometry.detector_positions)
    chord = 2 * torch.sqrt((r**2 - s**2).clamp(min=0))
    centre = geometry.n_detector // 2
    assert s[centre] == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(sino[:, centre], torch.full((12,), 2 * r, dtype=torch.float64), rtol=0.02, atol=0)
    inner = s.abs() < 0.8 * r
    torch.testing.assert_close(sino[:, inner], chord[inner].expand(12, -1), rtol=0.04, atol=0)
    assert (sino - chord).abs().max() < 0.1 * 2 * r  # edges: pixelation only


def test_orientation_blob_projects_at_x_cos_plus_y_sin():
    """A blob at (x0, y0), with img[a, b] = f(x_a, y_b), lands at s = x0 cos(theta) + y0 sin(theta)."""
    geometry = ParallelBeamGeometry.lodopab().scaled(96, 100)
    X, Y = _grid(geometry)
    x0, y0 = 0.06, -0.03
    blob = torch.exp(-((X - x0) ** 2 + (Y - y0) ** 2) / (2 * 0.004**2))[None, None]
    sino = forward_project(blob, geometry)[0, 0]
    s = torch.as_tensor(geometry.detector_positions)
    centroid = (sino * s).sum(1) / sino.sum(1)
    theta = torch.as_tensor(geometry.angles)
    expected = x0 * torch.cos(theta) + y0 * torch.sin(theta)
    torch.testing.assert_close(centroid, expected, rtol=0, atol=geometry.pixel_size / 10)
    assert centroid[0].item() == pytest.approx(x0, abs=0.002)  # theta ~ 0: s ~ x
    assert centroid[50].item() == pytest.approx(y0, abs=0.002)  # theta ~ pi/2: s ~ y


# ---- FBP ----------------------------------------------------------------------------------------------
def _skimage_geometry(n: int, n_angles: int) -> ParallelBeamGeometry:
    """Odd n and odd detector, unit pixel size and detector spacing = pixel size: skimage's conventions."""
    n_det = 2 * math.ceil(n * math.sqrt(2.0) / 2.0) + 1
    return ParallelBeamGeometry(n, n_angles, n_det, image_half_width=n / 2, detector_half_width=n_det / 2)


@pytest.fixture(scope="module")
def phantom_case():
    import skimage.data as skimage_data
    from skimage.transform import resize

    geometry = _skimage_geometry(129, 180)
    phantom = resize(skimage_data.shepp_logan_phantom(), (129, 129), anti_aliasing=True)
    sinogram = forward_project(torch.from_numpy(phantom)[None, None], geometry)
    return geometry, phantom, sinogram


@pytest.mark.parametrize("ours, theirs", [("hann", "hann"), ("ram-lak", "ramp")])
def test_fbp_matches_skimage_iradon(phantom_case, ours, theirs):
    """skimage: img[r, c], t = (c - n//2) cos(phi) - (r - n//2) sin(phi) = s for theta = phi + 90 deg."""
    from skimage.transform import iradon

    geometry, phantom, sinogram = phantom_case
    mine = fbp(sinogram, geometry, ours, 1.0)[0, 0].numpy()
    theta_degrees = np.rad2deg(geometry.angles) - 90.0
    reference = iradon(sinogram[0, 0].numpy().T, theta=theta_degrees, output_size=129, filter_name=theirs, circle=False)
    assert abs(_psnr(mine, phantom) - _psnr(reference, phantom)) < 0.1
    assert _psnr(mine, reference) > 60.0  # the same reconstruction, not just the same quality
    misaligned = iradon(sinogram[0, 0].numpy().T, theta=np.rad2deg(geometry.angles), output_size=129, filter_name=theirs, circle=False)
    assert _psnr(misaligned, phantom) < _psnr(mine, phantom) - 5.0  # the angle mapping matters


def test_fbp_of_projection_reconstructs_phantom(phantom_case):
    """Inverse crime (same operator), 180 angles, 129^2: Ram-Lak ~29.9 dB, Hann(1.0) ~24.9 dB."""
    geometry, phantom, sinogram = phantom_case
    ram_lak = fbp(sinogram, geometry, "ram-lak", 1.0)[0, 0].numpy()
    assert _psnr(ram_lak, phantom) > 29.0
    assert ram_lak.mean() == pytest.approx(phantom.mean(), rel=0.005)  # no DC bias


def test_fbp_of_disc_recovers_value_in_physical_units():
    geometry = ParallelBeamGeometry.lodopab().scaled(96, 120)
    X, Y = _grid(geometry)
    disc = (((X - 0.02) ** 2 + Y**2) <= 0.05**2).double()[None, None]
    reco = fbp(forward_project(disc, geometry), geometry, "hann", 0.641)[0, 0]
    inside = ((X - 0.02) ** 2 + Y**2) <= 0.035**2
    outside = (X**2 + Y**2) >= 0.09**2
    assert reco[inside].mean().item() == pytest.approx(1.0, abs=0.01)
    assert reco[outside].abs().mean().item() < 0.01


def test_fbp_without_padding_still_normalised():
    geometry = ParallelBeamGeometry.lodopab().scaled(64, 90)
    X, Y = _grid(geometry)
    disc = ((X**2 + Y**2) <= 0.05**2).double()[None, None]
    reco = fbp(forward_project(disc, geometry), geometry, "ram-lak", 1.0, padding=False)[0, 0]
    assert reco[(X**2 + Y**2) <= 0.03**2].mean().item() == pytest.approx(1.0, abs=0.03)


# ---- optional peer reference: ODL + ASTRA (test extras) ------------------------------------------------
def test_forward_projection_matches_odl_astra():
    import odl
    import astra  # noqa: F401  (odl needs it for impl="astra_cpu")
    geometry = ParallelBeamGeometry.lodopab().scaled(64, 60)
    w, wd = geometry.image_half_width, geometry.detector_half_width
    space = odl.uniform_discr([-w, -w], [w, w], geometry.image_shape, dtype="float32")
    odl_geometry = odl.applications.tomo.Parallel2dGeometry(
        odl.uniform_partition(0, np.pi, geometry.n_angles), odl.uniform_partition(-wd, wd, geometry.n_detector)
    )
    ray = odl.applications.tomo.RayTransform(space, odl_geometry, impl="astra_cpu")
    X, Y = (t.numpy() for t in _grid(geometry))
    image = np.exp(-((X - 0.03) ** 2 + (Y + 0.05) ** 2) / 0.02**2) + 0.5 * ((X / 0.1) ** 2 + (Y / 0.07) ** 2 < 1)
    reference = np.asarray(ray(image.astype(np.float32)).data)
    ours = forward_project(torch.from_numpy(image)[None, None], geometry)[0, 0].numpy()
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 0.01
