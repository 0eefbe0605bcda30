"""X2CT-GAN's metric conventions (PSNR on 0..2500 integers with PIXEL_MAX 4095; 2D SSIM averaged over slices
along the three axes) against their published formulas, computed here independently on hand-made volumes."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from ctpipe.metrics import X2CT_PSNR_COLUMN, X2CT_SSIM_COLUMN, psnr, psnr_x2ct, ssim2d_x2ct


def hand_made_volume(shape=(12, 14, 16), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A body-like [0, 1] volume (ellipsoid + bright core + gradient) and a degraded copy."""
    d, h, w = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    target = 0.1 + 0.3 * ((d / 0.9) ** 2 + (h / 0.7) ** 2 + (w / 0.8) ** 2 <= 1) + 0.4 * (d**2 + h**2 + w**2 <= 0.15)
    target = np.clip(target + 0.05 * w, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    pred = np.clip(target + rng.normal(0, 0.04, shape) + 0.03 * d, 0.0, 1.0)
    return pred, target


def x2ct_psnr_reference(real01: np.ndarray, fake01: np.ndarray) -> float:
    """The published formula: volumes scaled to 0..2500, ``astype(int32)``, ``20 log10(4095 / sqrt(MSE))``."""
    real = (real01 * 2500).astype(np.int32).astype(np.float64)
    fake = (np.clip(fake01, 0, 1) * 2500).astype(np.int32).astype(np.float64)
    mse = np.power(real - fake, 2).mean()
    return 100.0 if mse == 0 else 20 * np.log10(4095 / np.sqrt(mse))


def x2ct_ssim_reference(real01: np.ndarray, fake01: np.ndarray) -> float:
    """The published procedure: skimage SSIM (7x7 uniform window, sample covariance, data_range 1) with the
    last axis as channels, for the (D,H,W) volume transposed so that each axis in turn is the channel axis."""
    def ssim(a, b):
        return structural_similarity(a, b, data_range=1.0, channel_axis=-1, win_size=7,
                                     gaussian_weights=False, use_sample_covariance=True)
    fake = np.clip(fake01, 0, 1)
    axis_d = ssim(np.transpose(real01, (1, 2, 0)), np.transpose(fake, (1, 2, 0)))
    axis_h = ssim(np.transpose(real01, (0, 2, 1)), np.transpose(fake, (0, 2, 1)))
    axis_w = ssim(real01, fake)
    return (axis_d + axis_h + axis_w) / 3


def as_batch(*volumes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(volumes)[:, None])


def test_x2ct_psnr_by_hand():
    target = np.full((8, 8, 8), 0.5)  # -> 1250
    pred = target.copy()
    pred[:4] += 1 / 256  # 1259.77 -> truncated to 1259: an integer error of 9 in half the voxels
    expected = 20 * math.log10(4095 / math.sqrt(81 / 2))
    value = psnr_x2ct(as_batch(pred), as_batch(target))
    assert value.shape == (1,) and value.item() == pytest.approx(expected, abs=1e-9)
    assert psnr_x2ct(as_batch(target), as_batch(target)).item() == 100.0  # X2CT-GAN's value for MSE = 0


def test_x2ct_psnr_matches_the_published_formula_and_inflates_true_range_psnr():
    pairs = [hand_made_volume(seed=s) for s in range(3)]
    pred = as_batch(*[p for p, _ in pairs])
    target = as_batch(*[t for _, t in pairs])
    pred[0, 0, 0, 0, 0] = 1.7  # an overshoot: clipped, as X2CT-GAN clips its output
    values = psnr_x2ct(pred, target)
    for k in range(3):
        assert values[k].item() == pytest.approx(x2ct_psnr_reference(target[k, 0].numpy(), pred[k, 0].numpy()), abs=1e-9)
    true_range = psnr(pred.clamp(0, 1), target, data_range=1.0)
    inflation = values - true_range  # 20 log10(4095 / 2500) = 4.29 dB, up to the integer truncation
    assert torch.allclose(inflation, torch.full_like(inflation, 20 * math.log10(4095 / 2500)), atol=0.05)


def test_x2ct_ssim_matches_the_published_three_axis_procedure():
    pairs = [hand_made_volume(seed=s) for s in range(2)]
    values = ssim2d_x2ct(as_batch(*[p for p, _ in pairs]), as_batch(*[t for _, t in pairs]))
    for k, (pred, target) in enumerate(pairs):
        assert values[k].item() == pytest.approx(x2ct_ssim_reference(target, pred), abs=1e-10)
    pred, target = pairs[0]
    assert ssim2d_x2ct(as_batch(target), as_batch(target)).item() == pytest.approx(1.0)
    # not symmetric in the axes: a volume degraded along one axis differs from the 3D SSIM of ctpipe
    assert 0.0 < values[0].item() < 1.0


def test_x2ct_metrics_refuse_data_outside_the_unit_window():
    pred, target = hand_made_volume()
    with pytest.raises(ValueError, match=r"\[0, 1\] window"):
        psnr_x2ct(as_batch(pred), as_batch(target * 2500))
    with pytest.raises(ValueError, match="volumes"):
        ssim2d_x2ct(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    assert X2CT_PSNR_COLUMN == "psnr[x2ct:0-2500,max=4095]" and X2CT_SSIM_COLUMN == "ssim2d[x2ct:3-axis mean]"
