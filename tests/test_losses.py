"""CompositeLoss: every term is zero for identical images, grows with noise, and is differentiable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.ndimage import gaussian_filter

from ctpipe.losses import MS_SSIM_MIN_SIZE, CompositeLoss, LossWeights, edge_loss, sobel_magnitude
from ctpipe.metrics import ssim as metric_ssim
from ctpipe.models.vgg_features import ENV_VAR, VGG16_FILE_NAME, write_random_vgg16_weights

NOISE_LEVELS = (0.01, 0.03, 0.1, 0.2)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_vgg16_weights(tmp_path_factory.mktemp("vgg") / VGG16_FILE_NAME, layer="relu2_2")


def _smooth_image(size: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    """Smooth images in [0.2, 0.8] (away from the clamp bounds)."""
    rng = torch.Generator().manual_seed(seed)
    raw = torch.rand(batch, 1, size, size, generator=rng).numpy()
    smooth = gaussian_filter(raw, sigma=(0, 0, 3, 3))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return torch.from_numpy(0.2 + 0.6 * smooth).float()


def _noise(shape: torch.Size, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _single(term: str, vgg_file: Path | None = None, **extra) -> CompositeLoss:
    weights = {"l1": 0.0, term: 1.0, **extra}
    if term == "perceptual":
        weights["vgg_weights_path"] = str(vgg_file)
    return CompositeLoss(LossWeights(**weights))


@pytest.mark.parametrize("term", ["l1", "mse", "ms_ssim", "edge", "perceptual"])
def test_term_is_zero_for_identical_and_monotone_in_noise(term: str, vgg_file: Path) -> None:
    size = MS_SSIM_MIN_SIZE if term == "ms_ssim" else 32
    target = _smooth_image(size)
    loss = _single(term, vgg_file)
    total, logged = loss(target, target)
    assert set(logged) == {term, "total"}
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    noise = _noise(target.shape)
    values = [float(loss(target + level * noise, target)[0]) for level in NOISE_LEVELS]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[0] > 0


def test_l1_and_mse_analytic() -> None:
    target = torch.rand(2, 1, 16, 16)
    loss = CompositeLoss(LossWeights(l1=2.0, mse=3.0))
    total, logged = loss(target + 0.1, target)
    assert float(logged["l1"]) == pytest.approx(0.1, rel=1e-5)
    assert float(logged["mse"]) == pytest.approx(0.01, rel=1e-4)
    assert float(total) == pytest.approx(2.0 * 0.1 + 3.0 * 0.01, rel=1e-4)


def test_total_is_weighted_sum_and_gradients_reach_pred(vgg_file: Path) -> None:
    weights = LossWeights(l1=1.0, mse=0.5, ms_ssim=0.3, edge=0.2, perceptual=0.1,
                          vgg_weights_path=str(vgg_file))
    loss = CompositeLoss(weights)
    target = _smooth_image(MS_SSIM_MIN_SIZE, batch=1)
    pred = (target + 0.05 * _noise(target.shape)).requires_grad_(True)
    total, logged = loss(pred, target)
    expected = sum(getattr(weights, name) * float(value) for name, value in logged.items() if name != "total")
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert all(not v.requires_grad for v in logged.values())
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())  # VGG stays frozen


@pytest.mark.parametrize("term", ["ms_ssim", "edge", "perceptual"])
def test_each_term_alone_gives_gradient(term: str, vgg_file: Path) -> None:
    size = MS_SSIM_MIN_SIZE if term == "ms_ssim" else 32
    target = _smooth_image(size, batch=1)
    pred = (target + 0.05 * _noise(target.shape)).requires_grad_(True)
    _single(term, vgg_file)(pred, target)[0].backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_ms_ssim_too_small_raises_with_the_fix() -> None:
    loss = _single("ms_ssim")
    x = _smooth_image(64)
    with pytest.raises(ValueError) as err:
        loss(x, x)
    message = str(err.value)
    assert "161" in message and "(64, 64)" in message and "ms_ssim_fallback='ssim'" in message


def test_ms_ssim_fallback_is_single_scale_ssim() -> None:
    loss = _single("ms_ssim", ms_ssim_fallback="ssim")
    target = _smooth_image(64)
    pred = (target + 0.05 * _noise(target.shape)).clamp(0, 1)
    _, logged = loss(pred, target)
    assert set(logged) == {"ssim", "total"}
    # piq's single-scale SSIM (no downsampling) agrees with our skimage-matched metric
    reference = 1.0 - metric_ssim(pred, target, data_range=1.0).mean()
    assert float(logged["ssim"]) == pytest.approx(float(reference), abs=1e-4)


def test_out_of_range_inputs_do_not_crash_piq() -> None:
    loss = CompositeLoss(LossWeights(l1=1.0, ms_ssim=1.0))
    target = _smooth_image(MS_SSIM_MIN_SIZE, batch=1)
    pred = (target + 0.7 * _noise(target.shape)).requires_grad_(True)  # well outside [0, 1]
    total, logged = loss(pred, target)
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(pred.grad).all()


def test_volumes_use_3d_edges_and_slicewise_ssim() -> None:
    loss = CompositeLoss(LossWeights(l1=1.0, edge=1.0, ms_ssim=1.0, ms_ssim_fallback="ssim"))
    target = _smooth_image(20, batch=12).reshape(1, 1, 12, 20, 20)
    pred = (target + 0.05 * _noise(target.shape)).requires_grad_(True)
    total, logged = loss(pred, target)
    assert set(logged) == {"l1", "edge", "ssim", "total"}
    total.backward()
    assert torch.isfinite(pred.grad).all()


def test_sobel_magnitude_of_ramps_is_analytic() -> None:
    slope = 0.25
    ramp2d = slope * torch.arange(10.0).reshape(1, 1, 10, 1).expand(1, 1, 10, 12)
    # [-1, 0, 1] gives 2 * slope, the [1, 2, 1] smoothing sums to 4 -> 8 * slope
    assert torch.allclose(sobel_magnitude(ramp2d), torch.full((1, 1, 8, 10), 8 * slope), atol=1e-5)
    ramp3d = slope * torch.arange(6.0).reshape(1, 1, 1, 1, 6).expand(1, 1, 5, 7, 6)
    assert torch.allclose(sobel_magnitude(ramp3d), torch.full((1, 1, 3, 5, 4), 32 * slope), atol=1e-5)
    # a constant offset has no edges
    assert float(edge_loss(ramp2d + 0.3, ramp2d)) == pytest.approx(0.0, abs=1e-5)


def test_perceptual_missing_weights_message(monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=ENV_VAR) as err:
        CompositeLoss(LossWeights(perceptual=1.0))
    assert VGG16_FILE_NAME in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"l1": 0.0},
        {"l1": -1.0},
        {"mse": float("nan")},
        {"ms_ssim_fallback": "gmsd"},
        {"data_range": 0.0},
        {"vgg_layer": "relu9_9"},
    ],
)
def test_invalid_weights_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        LossWeights(**kwargs)


def test_loss_weights_are_frozen() -> None:
    with pytest.raises(Exception):
        LossWeights().l1 = 2.0  # type: ignore[misc]


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        CompositeLoss(LossWeights())(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_edge_loss_under_bf16_autocast_with_mixed_dtypes():
    import torch

    from ctpipe.losses import edge_loss

    pred = torch.rand(2, 1, 16, 16, requires_grad=True)
    target = torch.rand(2, 1, 16, 16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = edge_loss(pred.to(torch.bfloat16), target)
    loss.backward()
    assert torch.isfinite(loss) and pred.grad is not None
