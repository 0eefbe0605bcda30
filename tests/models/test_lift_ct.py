"""LiftCT: the lift operator follows the DRR geometry of ctpipe.ops.drr; the network's shapes, prior and gradients."""

import dataclasses

import pytest
import torch

from ctpipe.models.lift_ct import FRONTAL, LATERAL, LIFT_TINY, LiftCT, LiftCTConfig, lift_view, linearise
from ctpipe.ops.drr import VIEWS, DRRGeometry, drr_to_image, render_drr

N = 12


def point_volume(i: int, j: int, k: int) -> torch.Tensor:
    mu = torch.zeros(1, 1, N, N, N, dtype=torch.float64)
    mu[0, 0, i, j, k] = 1.0
    return mu


@pytest.mark.parametrize("point", [(2, 7, 9), (10, 1, 3), (5, 5, 0)])
def test_a_point_in_each_xray_lands_on_its_ray_through_the_volume(point):
    i, j, k = point
    geometry = DRRGeometry.parallel(detector_pixels=N)
    lifted = {}
    for view, name in ((FRONTAL, "frontal"), (LATERAL, "lateral")):
        assert VIEWS[view] == name
        image = render_drr(point_volume(i, j, k), 1.0, geometry, name)  # the real DRR operator
        image = torch.where(image > 1e-9, image, torch.zeros_like(image))  # grid_sample's round-off neighbours
        assert int((image > 0).sum()) == 1  # the point is one detector pixel
        lifted[view] = lift_view(image, view)[0, 0]
    on_frontal_ray = torch.nonzero(lifted[FRONTAL]).tolist()
    assert on_frontal_ray == [[i, a, k] for a in range(N)]  # the anterior-posterior ray through the point
    on_lateral_ray = torch.nonzero(lifted[LATERAL]).tolist()
    assert on_lateral_ray == [[r, j, k] for r in range(N)]  # the left-right ray through the point
    both = torch.nonzero(lifted[FRONTAL] * lifted[LATERAL]).tolist()
    assert both == [[i, j, k]]  # the two rays cross at the point


def test_lifted_projection_is_the_backprojection_of_the_drr():
    # <lift(P), v> = <P, A v> for the frontal and lateral parallel-beam DRRs A (the lift is A's adjoint)
    torch.manual_seed(0)
    volume = torch.rand(1, 1, N, N, N, dtype=torch.float64)
    maps = torch.rand(1, 1, N, N, dtype=torch.float64)
    geometry = DRRGeometry.parallel(detector_pixels=N)
    for view, name in ((FRONTAL, "frontal"), (LATERAL, "lateral")):
        forward = render_drr(volume, 1.0, geometry, name)
        assert torch.allclose((lift_view(maps, view) * volume).sum(), (maps * forward).sum(), rtol=1e-9)


def test_linearise_inverts_the_xray_normalisation():
    p = torch.linspace(0.0, 12.0, 50)
    assert torch.allclose(linearise(drr_to_image(p, 0.25), 0.25), p, atol=1e-4)


def test_network_shapes_prior_and_gradients():
    torch.manual_seed(0)
    model = LiftCT(LIFT_TINY)
    xray = torch.rand(2, 2, LIFT_TINY.xray_size, LIFT_TINY.xray_size) * 0.9
    prior = torch.rand(LIFT_TINY.volume_size, LIFT_TINY.volume_size, LIFT_TINY.volume_size) * 0.8 + 0.1
    model.set_prior(prior)
    out = model(xray)
    assert out.shape == (2, 1, 16, 16, 16)
    assert torch.allclose(out, prior.expand_as(out), atol=1e-5)  # zero-initialised head: predicts the prior
    out.mean().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    state = LiftCT(LIFT_TINY)
    state.load_state_dict(model.state_dict())
    assert torch.equal(state.prior, model.prior)  # the prior travels with the checkpoint
    with pytest.raises(ValueError, match="frontal, lateral"):
        model(torch.rand(1, 2, 20, 20))
    with pytest.raises(ValueError, match="multiple of volume_size"):
        LiftCTConfig(xray_size=40, volume_size=16)


def drr_pairs(n_patients: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random smooth [0, 1] volumes and their (frontal, lateral) X-rays from the real DRR operator."""
    generator = torch.Generator().manual_seed(seed)
    volumes = torch.nn.functional.avg_pool3d(torch.rand(n_patients, 1, size, size, size, generator=generator), 3, 1, 1)
    geometry = DRRGeometry.parallel(detector_pixels=size)
    xrays = torch.cat([drr_to_image(render_drr(volumes, 10.0, geometry, view), 0.25) for view in VIEWS], dim=1)
    return xrays, volumes


def test_nearest_prior_skips_the_query_itself_and_matches_its_projections():
    config = LiftCTConfig(xray_size=16, volume_size=16, encoder_channels=4, encoder_depth=1, feature_channels=2,
                          unet_channels=(4, 8), final_channels=4, prior="nearest")
    xrays, volumes = drr_pairs(6, 16)
    model = LiftCT(config)
    with pytest.raises(RuntimeError, match="set_bank"):
        model.nearest_volumes(xrays[:1])
    model.set_bank(xrays[1:], volumes[1:])
    assert torch.allclose(model.prior[0], volumes[1:].mean(dim=0))
    # a bank member never meets itself; a query outside the bank gets its nearest member
    chosen = model.nearest_volumes(xrays[1:3])
    assert not torch.equal(chosen[0], volumes[1]) and not torch.equal(chosen[1], volumes[2])
    distances = ((xrays[:1] - xrays[1:]) ** 2).flatten(1).sum(1)
    assert torch.equal(model.nearest_volumes(xrays[:1])[0], volumes[1 + int(distances.argmin())])
    two = LiftCT(dataclasses.replace(config, prior_neighbours=2))
    two.set_bank(xrays[1:], volumes[1:])
    order = distances.argsort()[:2] + 1
    assert torch.allclose(two.nearest_volumes(xrays[:1])[0], volumes[order].mean(dim=0))
    # the calibration maps projections to ray sums, and the correction makes the lateral sums the query's
    p = model.projections(xrays[:1])
    a, b = model.calibration
    corrected = model.consistent(model.nearest_volumes(xrays[:1]), p)
    wanted_lateral = lift_view(a * p[:, 1:2] + b, LATERAL)[:, :, 0]
    inner = (..., slice(1, -1), slice(1, -1))  # the box faces' half voxels are held constant by the DRR
    assert torch.allclose(corrected.sum(dim=2)[inner], wanted_lateral[inner], rtol=1e-3)
    # the bank travels with the state dict into a fresh model
    fresh = LiftCT(config)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.bank_volumes, model.bank_volumes) and torch.equal(fresh.calibration, model.calibration)
