"""LiftCT: the lift operator follows the DRR geometry of ctpipe.ops.drr; the network's shapes, prior and gradients."""

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
