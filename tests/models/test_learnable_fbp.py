"""LearnableFBP: equals ops.fbp at init, parameter groups, freezing, state dict, pickling."""

import io
import pickle

import torch
from torch import nn

from ctpipe.models.learnable_fbp import LearnableFBP
from ctpipe.ops import FixedWindow, ParallelBeamGeometry, WindowII, fbp, forward_project

GEOMETRY = ParallelBeamGeometry.lodopab().scaled(32, 24)


def _sinogram(batch: int = 2) -> torch.Tensor:
    c = torch.as_tensor(GEOMETRY.pixel_centers, dtype=torch.float32)
    X, Y = torch.meshgrid(c, c, indexing="ij")
    disc = ((X - 0.02) ** 2 + Y**2 <= 0.06**2).float()
    return forward_project(disc.expand(batch, 1, 32, 32).contiguous(), GEOMETRY)


def test_output_shape_and_identity_postprocess():
    model = LearnableFBP(GEOMETRY, WindowII())
    out = model(_sinogram(3))
    assert out.shape == (3, 1, 32, 32)
    assert isinstance(model.postprocess, nn.Identity)


def test_hann_baseline_equals_ops_fbp_and_window_ii_init_matches_it():
    sino = _sinogram()
    expected = fbp(sino, GEOMETRY, "hann", 0.641)
    baseline = LearnableFBP.hann_baseline(GEOMETRY)
    torch.testing.assert_close(baseline(sino), expected)
    torch.testing.assert_close(LearnableFBP(GEOMETRY, WindowII())(sino), expected, rtol=1e-5, atol=1e-6)
    assert list(baseline.parameters()) == [] and baseline.state_dict() == {}


def test_state_dict_holds_only_window_parameters():
    model = LearnableFBP(GEOMETRY, WindowII(n_terms=5))
    assert sorted(model.state_dict()) == ["window.coefficients", "window.cutoff_raw"]


def test_window_gets_gradients_through_backprojection():
    model = LearnableFBP(GEOMETRY, WindowII())
    model(_sinogram()).square().mean().backward()
    assert model.window.coefficients.grad.abs().sum() > 0
    assert model.window.cutoff_raw.grad != 0


def test_parameter_groups_and_freeze_fbp():
    post = nn.Conv2d(1, 1, 3, padding=1)
    model = LearnableFBP(GEOMETRY, WindowII(), postprocess=post)
    assert {id(p) for p in model.fbp_parameters()} == {id(p) for p in model.window.parameters()}
    assert {id(p) for p in model.postprocess_parameters()} == {id(p) for p in post.parameters()}
    model.freeze_fbp()
    window_before = {k: v.clone() for k, v in model.window.state_dict().items()}
    post_before = post.weight.detach().clone()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    loss = (model(_sinogram()) - 1.0).square().mean()
    loss.backward()
    optimiser.step()
    for key, value in model.window.state_dict().items():
        assert torch.equal(value, window_before[key])
    assert not torch.equal(post.weight, post_before)


def test_training_the_window_lowers_the_loss():
    sino = _sinogram()
    c = torch.as_tensor(GEOMETRY.pixel_centers, dtype=torch.float32)
    X, Y = torch.meshgrid(c, c, indexing="ij")
    target = (((X - 0.02) ** 2 + Y**2) <= 0.06**2).float().expand(2, 1, 32, 32)
    model = LearnableFBP(GEOMETRY, WindowII())
    optimiser = torch.optim.Adam(model.fbp_parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = (model(sino) - target).square().mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_model_pickles_and_reloads_from_state_dict():
    model = LearnableFBP(GEOMETRY, WindowII(), postprocess=nn.Conv2d(1, 1, 3, padding=1))
    with torch.no_grad():
        model.window.coefficients[2] = 0.1
    clone = pickle.loads(pickle.dumps(model))
    assert clone.geometry == GEOMETRY
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = LearnableFBP(ParallelBeamGeometry.from_dict(GEOMETRY.to_dict()), WindowII(),
                         postprocess=nn.Conv2d(1, 1, 3, padding=1))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    sino = _sinogram()
    torch.testing.assert_close(fresh(sino), model(sino))
    torch.testing.assert_close(clone(sino), model(sino))


def test_fixed_window_model_builds_no_graph():
    model = LearnableFBP(GEOMETRY, FixedWindow("hann"))
    assert not model(_sinogram()).requires_grad
