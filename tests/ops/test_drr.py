import dataclasses
import math

import numpy as np
import pytest
import torch

from ctpipe.ops.drr import (
    MU_WATER_PER_MM,
    DRRGeometry,
    drr_to_image,
    hu_to_mu,
    render_drr,
    render_dual_view,
)

N = 32
SPACING = 2.0  # mm


def cube_volume(n: int = N, lo: int = 8, hi: int = 24, mu: float = 0.02) -> torch.Tensor:
    volume = torch.zeros(1, 1, n, n, n, dtype=torch.float64)
    volume[..., lo:hi, lo:hi, lo:hi] = mu
    return volume


def blob(centre: tuple[int, int, int], n: int = N) -> torch.Tensor:
    """A small Gaussian blob at RAS voxel index ``centre``."""
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 3, indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return torch.exp(-r2 / 8.0)[None, None]


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    image = image[0, 0]
    rows, cols = torch.meshgrid(*[torch.arange(s, dtype=image.dtype) for s in image.shape], indexing="ij")
    total = image.sum()
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


# ---- geometry object ---------------------------------------------------------------------------
def test_geometry_repr_round_trips_and_is_readable():
    for geometry in (DRRGeometry.parallel(64), DRRGeometry.cone_beam(96, 500.0), DRRGeometry.parallel(8, samples_per_voxel=3.0)):
        text = repr(geometry)
        assert text.startswith("DRRGeometry.")
        assert eval(text, {"DRRGeometry": DRRGeometry}) == geometry
        assert DRRGeometry.from_dict(geometry.to_dict()) == geometry


def test_geometry_is_immutable_and_validates():
    geometry = DRRGeometry.cone_beam()
    assert (geometry.source_to_isocenter_mm, geometry.source_to_detector_mm) == (541.0, 949.0)
    assert geometry.magnification == pytest.approx(949.0 / 541.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        geometry.detector_pixels = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="source_to_isocenter_mm"):
        DRRGeometry.cone_beam(source_to_isocenter_mm=1000.0, source_to_detector_mm=900.0)
    with pytest.raises(ValueError, match="mode"):
        DRRGeometry(mode="fan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown keys"):
        DRRGeometry.from_dict({"type": "drr", "pixels": 3})


def test_hu_to_mu_and_image_mapping():
    hu = torch.tensor([-1000.0, 0.0, 1000.0, -2000.0])
    mu = hu_to_mu(hu)
    assert mu[1] == pytest.approx(MU_WATER_PER_MM)
    assert mu[0] == pytest.approx(2e-5, rel=1e-4)  # air, LoDoPaB's 0.02 1/m
    assert mu[2] == pytest.approx(2 * MU_WATER_PER_MM - 2e-5)
    assert mu[3] == 0.0
    p = torch.linspace(0, 20, 11)
    image = drr_to_image(p, gain=0.25)
    assert image[0] == 0 and torch.all(image < 1) and torch.all(image[1:] > image[:-1])
    assert torch.allclose(-torch.log1p(-image) / 0.25, p, rtol=1e-5, atol=1e-6)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        render_drr(torch.zeros(4, 4, 4), 1.0, DRRGeometry.parallel(4), "frontal")
    with pytest.raises(ValueError, match="view"):
        render_drr(torch.zeros(1, 1, 4, 4, 4), 1.0, DRRGeometry.parallel(4), "axial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exact"):
        render_drr(torch.zeros(1, 1, 4, 4, 4), 1.0, DRRGeometry.cone_beam(4), "frontal", method="exact")


# ---- analytic values ---------------------------------------------------------------------------
@pytest.mark.parametrize("view", ["frontal", "lateral"])
@pytest.mark.parametrize("method", ["exact", "raymarch"])
def test_parallel_uniform_cube_is_path_length_times_mu(view, method):
    mu = 0.02
    image = render_drr(cube_volume(mu=mu), SPACING, DRRGeometry.parallel(N), view, method=method)[0, 0]
    expected = 16 * SPACING * mu  # 16 voxels of 2 mm
    inside = image[10:22, 10:22]  # the cube's shadow, away from its edges
    assert torch.allclose(inside, torch.full_like(inside, expected), rtol=0.01)
    assert image[:6].abs().max() == 0 and image[:, :6].abs().max() == 0  # nothing outside the shadow
    # the total is exact: sum over pixels x pixel area = mu x cube volume
    assert float(image.sum()) * SPACING**2 == pytest.approx(mu * (16 * SPACING) ** 3, rel=0.01)


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_cone_beam_cube_matches_analytic_chord_length(view):
    n, spacing, mu = 32, 4.0, 0.02
    half = 12 * spacing  # cube voxels 4..27 -> [-48, 48] mm
    geometry = DRRGeometry.cone_beam(detector_pixels=48, samples_per_voxel=4.0)
    image = render_drr(cube_volume(n, 4, 28, mu), spacing, geometry, view)[0, 0].numpy()
    extent = n * spacing * geometry.magnification
    coords = extent / 2 - (np.arange(48) + 0.5) * extent / 48
    sid, sdd = geometry.source_to_isocenter_mm, geometry.source_to_detector_mm
    checked = 0
    for r, v in enumerate(coords):
        for c, u in enumerate(coords):
            # ray from the source (depth sid) to the pixel (depth sid - sdd), transverse (u, v)
            x_exit = max(abs(u), abs(v)) * (sid + half) / sdd  # largest transverse offset inside the cube
            if x_exit > half - 1.5 * spacing:
                continue  # rays that leave through a side face: skip, their edges are voxel-blurred
            chord = 2 * half * math.sqrt(u * u + v * v + sdd * sdd) / sdd
            assert image[r, c] == pytest.approx(chord * mu, rel=0.01), (r, c)
            checked += 1
    assert checked > 100
    # well outside the magnified shadow the image is empty
    assert np.abs(image[0, 0]) == 0


def test_exact_and_raymarched_parallel_agree_on_a_smooth_volume():
    volume = blob((12, 18, 20)) + 0.5 * blob((20, 10, 9))
    for view in ("frontal", "lateral"):
        exact = render_drr(volume, 1.5, DRRGeometry.parallel(40, 60.0), view, method="exact")
        marched = render_drr(volume, 1.5, DRRGeometry.parallel(40, 60.0), view, method="raymarch")
        assert torch.allclose(exact, marched, atol=0.005 * float(exact.max()))


def test_anisotropic_spacing_scales_the_line_integral():
    volume = cube_volume()
    frontal = render_drr(volume, (1.0, 3.0, 1.0), DRRGeometry.parallel(N, 32.0), "frontal")  # rays along A
    lateral = render_drr(volume, (1.0, 3.0, 1.0), DRRGeometry.parallel(N, 96.0), "lateral")  # rays along R
    assert float(frontal[0, 0, 16, 16]) == pytest.approx(16 * 3.0 * 0.02, rel=1e-6)
    assert float(lateral.max()) == pytest.approx(16 * 1.0 * 0.02, rel=1e-6)


def test_gradient_is_the_adjoint_of_the_exact_sum():
    volume = torch.rand(1, 1, N, N, N, dtype=torch.float64, requires_grad=True)
    render_drr(volume, SPACING, DRRGeometry.parallel(N), "frontal").sum().backward()
    # every voxel contributes spacing x (one detector pixel) when the grids coincide
    assert torch.allclose(volume.grad, torch.full_like(volume, SPACING))


# ---- orientation -------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", [DRRGeometry.parallel(N), DRRGeometry.cone_beam(N)], ids=["parallel", "cone"])
def test_views_put_anatomy_on_the_expected_sides(geometry):
    middle = (N - 1) / 2
    # RAS index: axis 0 grows toward the patient's Right, so a small index is the patient's LEFT.
    left = blob((6, 16, 16))
    frontal_row, frontal_col = centre_of_mass(render_drr(left, SPACING, geometry, "frontal"))
    assert frontal_col > middle + 4  # patient's left appears on the viewer's right in the frontal view
    assert abs(frontal_row - middle) < 1.5
    anterior = blob((16, 26, 16))
    lateral_row, lateral_col = centre_of_mass(render_drr(anterior, SPACING, geometry, "lateral"))
    assert lateral_col < middle - 4  # anterior is on the left of the lateral image
    superior = blob((16, 16, 27))
    for view in ("frontal", "lateral"):
        row, col = centre_of_mass(render_drr(superior, SPACING, geometry, view))
        assert row < middle - 4 and abs(col - middle) < 1.5  # superior is up in both views
    # left-right does not move the lateral image, anterior-posterior does not move the frontal one
    assert centre_of_mass(render_drr(left, SPACING, geometry, "lateral"))[1] == pytest.approx(middle, abs=1.0)
    assert centre_of_mass(render_drr(anterior, SPACING, geometry, "frontal"))[1] == pytest.approx(middle, abs=1.0)


def test_cone_beam_magnifies_objects_near_the_source():
    geometry = DRRGeometry.cone_beam(48)
    near_source = blob((22, 26, 16))  # anterior (y = +21 mm): close to the frontal source
    near_detector = blob((22, 6, 16))  # y = -19 mm
    middle = (48 - 1) / 2
    offset_near = middle - centre_of_mass(render_drr(near_source, SPACING, geometry, "frontal"))[1]
    offset_far = middle - centre_of_mass(render_drr(near_detector, SPACING, geometry, "frontal"))[1]
    # magnification = source-to-detector / source-to-object distance
    sid = geometry.source_to_isocenter_mm
    assert offset_near / offset_far == pytest.approx((sid + 19.0) / (sid - 21.0), rel=0.01)


def test_dual_view_batch_and_float32():
    volume = torch.rand(3, 1, 16, 16, 16)
    images = render_dual_view(volume, 2.0, DRRGeometry.parallel(20))
    assert images.shape == (3, 2, 20, 20) and images.dtype == torch.float32
    assert torch.allclose(images[1:2, 1:2], render_drr(volume[1:2], 2.0, DRRGeometry.parallel(20), "lateral"))
