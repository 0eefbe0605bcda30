"""The gather projector pair (ctpipe.ops.fast_backproject) against the grid_sample reference."""

import math

import numpy as np
import pytest
import torch

from ctpipe.ops import ParallelBeamGeometry, backproject, fbp, forward_project
from ctpipe.ops import fast_backproject, projector

LODOPAB = ParallelBeamGeometry.lodopab()
GEOMETRIES = {
    "fold4_even": LODOPAB.scaled(64, 60),  # 60 % 4 == 0: 4 angles per base angle
    "fold2_odd_pixels": LODOPAB.scaled(63, 30),  # 30 % 4 == 2: mirror pairs only
    "fold1": LODOPAB.scaled(33, 7),  # odd angle count: no folding
    "narrow_detector": ParallelBeamGeometry(20, 8, 9, image_half_width=1.0, detector_half_width=0.7),  # clamping
    "tiny": ParallelBeamGeometry(8, 6, 13, image_half_width=1.0, detector_half_width=1.5),
}


def _random(geometry: ParallelBeamGeometry, batch: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 1, *geometry.image_shape, generator=gen, dtype=dtype)
    sinogram = torch.randn(batch, 1, *geometry.sinogram_shape, generator=gen, dtype=dtype)
    return image, sinogram


def _relative_max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- structure ----------------------------------------------------------------------------------------
def test_fold_counts():
    assert [fast_backproject.fold_of(a) for a in (1000, 60, 30, 6, 7, 1)] == [4, 4, 2, 2, 1, 1]
    assert fast_backproject.plan_for(LODOPAB, torch.float32, torch.device("cpu")).needs_clamp is False
    assert fast_backproject.plan_for(GEOMETRIES["narrow_detector"], torch.float32, torch.device("cpu")).needs_clamp


@pytest.mark.parametrize("n_angles", [1000, 60, 30, 7])
def test_partner_angles_are_the_symmetric_angles(n_angles):
    """Column k of the partner table is pi - theta, theta + pi/2, pi/2 - theta of the base angle."""
    fold = fast_backproject.fold_of(n_angles)
    partners = fast_backproject._partner_angles(n_angles, fold)
    angles = (np.arange(n_angles) + 0.5) * math.pi / n_angles
    base = angles[partners[:, 0].numpy()]
    expected = [base, math.pi - base, base + math.pi / 2, math.pi / 2 - base][:fold]
    for column, values in enumerate(expected):
        np.testing.assert_allclose(angles[partners[:, column].numpy()], values, atol=1e-12)
    assert sorted(partners.reshape(-1).tolist()) == list(range(n_angles))  # every angle exactly once


# ---- the same operator as the reference -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("batch", [1, 3])
def test_gather_equals_grid_sample_float64(name, batch):
    geometry = GEOMETRIES[name]
    image, sinogram = _random(geometry, batch, torch.float64)
    for function, data in ((forward_project, image), (backproject, sinogram)):
        fast = function(data, geometry, method="gather")
        reference = function(data, geometry, method="grid_sample")
        assert fast.shape == reference.shape
        assert _relative_max_error(fast, reference) < 1e-12


@pytest.mark.parametrize("name", ["fold4_even", "fold2_odd_pixels"])
def test_gather_equals_grid_sample_float32(name):
    geometry = GEOMETRIES[name]
    image, sinogram = _random(geometry, 2, torch.float32)
    assert _relative_max_error(forward_project(image, geometry, method="gather"),
                               forward_project(image, geometry, method="grid_sample")) < 5e-5
    assert _relative_max_error(backproject(sinogram, geometry, method="gather"),
                               backproject(sinogram, geometry, method="grid_sample")) < 5e-5


def test_gather_is_the_cpu_default():
    assert projector.default_method("cpu") == "gather"
    assert projector.default_method("cuda") == "grid_sample"
    geometry = GEOMETRIES["fold4_even"]
    image, _ = _random(geometry, 1, torch.float64)
    torch.testing.assert_close(forward_project(image, geometry), forward_project(image, geometry, method="gather"),
                               rtol=0, atol=0)


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'fast'.*gather.*grid_sample"):
        backproject(torch.zeros(1, 1, 60, GEOMETRIES["fold4_even"].n_detector), GEOMETRIES["fold4_even"], method="fast")


@pytest.mark.parametrize("budget", [1, 64 * 64 * 3])
def test_chunking_changes_nothing(monkeypatch, budget):
    geometry = GEOMETRIES["fold4_even"]
    image, sinogram = _random(geometry, 2, torch.float64, seed=3)
    fp, bp = forward_project(image, geometry, method="gather"), backproject(sinogram, geometry, method="gather")
    monkeypatch.setattr(fast_backproject, "GATHER_BUDGET_ENTRIES", budget)
    assert _relative_max_error(forward_project(image, geometry, method="gather"), fp) < 1e-13
    assert _relative_max_error(backproject(sinogram, geometry, method="gather"), bp) < 1e-13


def test_grid_sample_chunking_changes_nothing(monkeypatch):
    geometry = GEOMETRIES["fold4_even"]
    image, _ = _random(geometry, 2, torch.float64, seed=4)
    reference = forward_project(image, geometry, method="grid_sample")
    monkeypatch.setattr(projector, "CHUNK_BUDGET_ELEMENTS", 7 * 64 * 64)
    assert projector._chunk_size(geometry) == 7
    torch.testing.assert_close(forward_project(image, geometry, method="grid_sample"), reference)


# ---- adjoint pair and autograd ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_adjoint_identity_float32(name):
    """<W f, g> = <f, W^T g> to 1e-5 in float32 (non-negative data: no cancellation in the sums)."""
    geometry = GEOMETRIES[name]
    image, sinogram = (t.abs() for t in _random(geometry, 2, torch.float32, seed=5))
    lhs = (forward_project(image, geometry, method="gather").double() * sinogram.double()).sum().item()
    rhs = (image.double() * backproject(sinogram, geometry, method="gather").double()).sum().item()
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_adjoint_identity_float64_signed(name):
    geometry = GEOMETRIES[name]
    image, sinogram = _random(geometry, 2, torch.float64, seed=6)
    lhs = (forward_project(image, geometry, method="gather") * sinogram).sum().item()
    rhs = (image * backproject(sinogram, geometry, method="gather")).sum().item()
    scale = (forward_project(image.abs(), geometry, method="gather") * sinogram.abs()).sum().item()
    assert abs(lhs - rhs) <= 1e-12 * scale


@pytest.mark.parametrize("n_angles", [8, 6, 5])  # folds 4, 2, 1
def test_gradcheck_tiny_geometry(n_angles):
    tiny = ParallelBeamGeometry(n_pixels=7, n_angles=n_angles, n_detector=11, image_half_width=1.0,
                                detector_half_width=1.5)
    x = torch.rand(2, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 1, n_angles, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: forward_project(t, tiny, method="gather"), (x,))
    assert torch.autograd.gradcheck(lambda t: backproject(t, tiny, method="gather"), (y,))


def test_gradients_equal_the_reference_gradients():
    geometry = GEOMETRIES["fold2_odd_pixels"]
    image, sinogram = _random(geometry, 2, torch.float64, seed=7)
    weights_img, weights_sino = _random(geometry, 2, torch.float64, seed=8)
    grads = {}
    for method in projector.METHODS:
        x, y = image.clone().requires_grad_(), sinogram.clone().requires_grad_()
        loss = (forward_project(x, geometry, method=method) * weights_sino).sum() + (
            backproject(y, geometry, method=method) ** 2 * weights_img).sum()
        loss.backward()
        grads[method] = (x.grad, y.grad)
    for fast, reference in zip(grads["gather"], grads["grid_sample"]):
        assert _relative_max_error(fast, reference) < 1e-12


# ---- FBP quality: the same reconstruction -------------------------------------------------------------------
def test_fbp_gather_equals_fbp_grid_sample_on_a_phantom():
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    geometry = LODOPAB.scaled(96, 120)
    phantom = torch.from_numpy(resize(shepp_logan_phantom(), (96, 96), anti_aliasing=True)).float()[None, None]
    sinogram = forward_project(phantom, geometry, method="grid_sample")
    fast = fbp(sinogram, geometry, "hann", 0.641, method="gather")
    reference = fbp(sinogram, geometry, "hann", 0.641, method="grid_sample")

    def psnr(image, target):
        return 10 * math.log10(((target.max() - target.min()) ** 2 / ((image - target) ** 2).mean()).item())

    assert abs(psnr(fast, phantom) - psnr(reference, phantom)) < 0.05
    assert psnr(fast, reference) > 90.0  # equal to float32 rounding, not merely as good


# ---- CUDA (runs only where a GPU exists) ----------------------------------------------------------------------
@pytest.mark.cuda  # skipped without a device (tests/conftest.py); `make gpu-check` runs it
def test_gather_on_cuda_equals_cpu():
    geometry = GEOMETRIES["fold4_even"]
    image, sinogram = _random(geometry, 3, torch.float64, seed=9)
    for method in projector.METHODS:
        for function, data in ((forward_project, image), (backproject, sinogram)):
            on_gpu = function(data.cuda(), geometry, method=method).cpu()
            assert _relative_max_error(on_gpu, function(data, geometry, method="grid_sample")) < 1e-10
    x = image.cuda().requires_grad_()
    forward_project(x, geometry, method="gather").sum().backward()
    assert x.grad is not None and x.grad.device.type == "cuda"
