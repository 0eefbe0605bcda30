"""ctpipe.metrics against skimage (the peer reference) and analytic values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ctpipe import metrics
from ctpipe.metrics import (
    check_range,
    mae,
    metric_column,
    psnr,
    ssim,
)


def _pair(shape: tuple[int, ...], smooth: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A target in [0, 1] and a noisy prediction (clipped to [0, 1] too)."""
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    if smooth:
        target = gaussian_filter(target, sigma=3.0)
        target = (target - target.min()) / (target.max() - target.min())
    pred = np.clip(target + 0.1 * rng.standard_normal(shape), 0.0, 1.0)
    return pred, target


def _batch(shape: tuple[int, ...], n: int, smooth: bool, seed: int = 0):
    pairs = [_pair(shape, smooth, seed + i) for i in range(n)]
    pred = np.stack([p for p, _ in pairs])[:, None]
    target = np.stack([t for _, t in pairs])[:, None]
    return pred, target, torch.from_numpy(pred).float(), torch.from_numpy(target).float()


@pytest.mark.parametrize("smooth", [False, True])
def test_psnr_2d_matches_skimage(smooth: bool) -> None:
    pred_np, target_np, pred, target = _batch((37, 45), 3, smooth)
    ours = psnr(pred, target, data_range=1.0)
    assert ours.shape == (3,) and ours.dtype == torch.float64
    for i in range(3):
        ref = peak_signal_noise_ratio(
            target_np[i, 0].astype(np.float32), pred_np[i, 0].astype(np.float32), data_range=1.0
        )
        assert abs(float(ours[i]) - ref) < 1e-4


@pytest.mark.parametrize("smooth", [False, True])
def test_ssim_2d_matches_skimage(smooth: bool) -> None:
    pred_np, target_np, pred, target = _batch((37, 45), 3, smooth)
    ours = ssim(pred, target, data_range=1.0)
    for i in range(3):
        ref = structural_similarity(
            target_np[i, 0].astype(np.float32),
            pred_np[i, 0].astype(np.float32),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(float(ours[i]) - ref) < 1e-4


def test_per_image_range_matches_skimage() -> None:
    # a target that does not fill [0, 1]: per-image range differs from 1
    pred_np, target_np, _, _ = _batch((40, 40), 2, smooth=True, seed=5)
    target_np = 0.2 + 0.5 * target_np
    pred_np = 0.2 + 0.5 * pred_np
    pred, target = torch.from_numpy(pred_np), torch.from_numpy(target_np)
    ours_psnr = psnr(pred, target, data_range="per_image")
    ours_ssim = ssim(pred, target, data_range="per_image")
    for i in range(2):
        t, p = target_np[i, 0], pred_np[i, 0]
        rng_i = t.max() - t.min()
        assert abs(float(ours_psnr[i]) - peak_signal_noise_ratio(t, p, data_range=rng_i)) < 1e-4
        ref = structural_similarity(
            t, p, data_range=rng_i, gaussian_weights=True, use_sample_covariance=False
        )
        assert abs(float(ours_ssim[i]) - ref) < 1e-4
    # and it really is a different number from range 1
    assert float((psnr(pred, target, 1.0) - ours_psnr).abs().min()) > 1.0


def test_ssim_3d_matches_skimage_nd() -> None:
    pred_np, target_np, pred, target = _batch((13, 16, 19), 2, smooth=True, seed=3)
    ours = ssim(pred, target, data_range=1.0)
    for i in range(2):
        ref = structural_similarity(
            target_np[i, 0], pred_np[i, 0], data_range=1.0, gaussian_weights=True,
            use_sample_covariance=False,
        )
        assert abs(float(ours[i]) - ref) < 1e-4


def test_psnr_3d_and_mae_analytic() -> None:
    target = torch.rand(2, 1, 6, 7, 8) * 0.8
    pred = target + 0.05
    expected = torch.full((2,), 20 * math.log10(1 / 0.05), dtype=torch.float64)
    assert torch.allclose(psnr(pred, target, 1.0), expected, atol=1e-5)
    assert torch.allclose(mae(pred, target), torch.full((2,), 0.05, dtype=torch.float64), atol=1e-6)
    assert torch.isinf(psnr(target, target, 1.0)).all()


def test_identical_images_have_ssim_one() -> None:
    x = torch.rand(2, 1, 20, 20)
    assert torch.allclose(ssim(x, x, 1.0), torch.ones(2, dtype=torch.float64))
    v = torch.rand(1, 1, 12, 12, 12)
    assert torch.allclose(ssim(v, v, 1.0), torch.ones(1, dtype=torch.float64))


def test_missing_data_range_is_type_error() -> None:
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(TypeError):
        psnr(x, x)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ssim(x, x)  # type: ignore[call-arg]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "max", (1.0, 1.0), (0.0,)])
def test_invalid_data_range_raises(bad) -> None:
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError):
        psnr(x, x, bad)


def test_bool_data_range_is_type_error() -> None:
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(TypeError):
        psnr(x, x, True)


def test_wrong_fixed_range_raises() -> None:
    hu_offset = torch.rand(1, 1, 16, 16) * 2500.0  # [0, 2500] data
    with pytest.raises(ValueError, match="outside the declared data range"):
        psnr(hu_offset, hu_offset, data_range=1.0)
    raw_hu = hu_offset - 1024.0  # negative values against a [0, R] range
    with pytest.raises(ValueError, match="outside the declared data range"):
        ssim(raw_hu, raw_hu, data_range=4095.0)
    # the same data with explicit bounds is fine
    assert torch.isfinite(ssim(raw_hu + 1, raw_hu, data_range=(-1024.0, 3071.0))).all()
    nan_target = hu_offset.clone()
    nan_target[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        psnr(hu_offset, nan_target, 4095.0)


def test_tolerance_allows_roundoff_only() -> None:
    x = torch.rand(1, 1, 16, 16)
    x[0, 0, 0, 0] = 1.0 + 1e-6
    psnr(x, x, 1.0)  # round-off: accepted
    x[0, 0, 0, 0] = 1.01
    with pytest.raises(ValueError):
        psnr(x, x, 1.0)
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\]"):
        check_range(torch.tensor([-0.5, 0.5]), 0.0, 0.25, "probe")


def test_constant_target_per_image_raises() -> None:
    x = torch.zeros(2, 1, 16, 16)
    x[0] = torch.rand(1, 16, 16)
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        psnr(x, x, "per_image")


def test_too_small_for_ssim_window_raises() -> None:
    x = torch.rand(1, 1, 10, 30)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(x, x, 1.0)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17), 1.0)
    with pytest.raises(ValueError, match="expected"):
        psnr(torch.rand(16, 16), torch.rand(16, 16), 1.0)


def test_column_names_carry_the_range() -> None:
    assert metric_column("psnr", 1.0) == "psnr[range=1]"
    assert metric_column("psnr", "per_image") == "psnr[range=per_image]"
    assert metric_column("ssim", 4095) == "ssim[range=4095]"
    assert metric_column("psnr", (-1.0, 1.0)) == "psnr[range=-1..1]"
    assert metric_column("mae", None) == "mae"


def test_metrics_keep_the_device_and_do_not_track_grad() -> None:
    pred = torch.rand(2, 1, 16, 16, requires_grad=True)
    target = torch.rand(2, 1, 16, 16)
    out = psnr(pred, target, 1.0)
    assert out.device == pred.device and not out.requires_grad
    assert metrics.ssim_window_size() == 11
