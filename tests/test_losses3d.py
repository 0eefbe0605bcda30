"""The differentiable 3D SSIM equals the metric's 3D SSIM (float64, skimage-checked) and has gradients."""

from __future__ import annotations

import pytest
import torch

from ctpipe.losses import ssim3d, ssim3d_loss
from ctpipe.metrics import ssim


def volumes(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 1, 16, 18, 20, generator=gen)
    target = torch.nn.functional.avg_pool3d(target, 3, stride=1, padding=1)  # some structure
    pred = (target + 0.1 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    return pred, target


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim3d_matches_the_metric(seed: int) -> None:
    pred, target = volumes(seed)
    expected = ssim(pred, target, data_range=1.0)
    assert torch.allclose(ssim3d(pred, target).double(), expected, atol=2e-5)
    assert float(ssim3d_loss(pred, target)) == pytest.approx(1 - float(expected.mean()), abs=2e-5)
    assert torch.allclose(ssim3d(target, target), torch.ones(2))


def test_ssim3d_gradient_improves_the_prediction() -> None:
    pred, target = volumes(2)
    pred = pred.clone().requires_grad_(True)
    loss = ssim3d_loss(pred, target)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = pred - 5.0 * pred.grad
    assert float(ssim3d_loss(stepped, target)) < float(loss.detach())


def test_ssim3d_refuses_small_volumes() -> None:
    with pytest.raises(ValueError, match="at least 11"):
        ssim3d(torch.rand(1, 1, 8, 16, 16), torch.rand(1, 1, 8, 16, 16))
