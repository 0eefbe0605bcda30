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
    MetricAccumulator,
    MetricSpec,
    check_range,
    mae,
    merge_states,
    metric_column,
    psnr,
    ssim,
    ssim_slicewise,
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


def test_ssim_slicewise_is_mean_of_skimage_per_slice() -> None:
    pred_np, target_np, pred, target = _batch((5, 16, 19), 2, smooth=False, seed=7)
    ours = ssim_slicewise(pred, target, data_range=1.0)
    for i in range(2):
        refs = [
            structural_similarity(
                target_np[i, 0, z], pred_np[i, 0, z], data_range=1.0, gaussian_weights=True,
                use_sample_covariance=False,
            )
            for z in range(5)
        ]
        assert abs(float(ours[i]) - float(np.mean(refs))) < 1e-4
    # slice-wise and true 3D SSIM are different measures
    _, _, p3, t3 = _batch((12, 16, 19), 1, smooth=True, seed=1)
    assert abs(float(ssim(p3, t3, 1.0)[0]) - float(ssim_slicewise(p3, t3, 1.0)[0])) > 1e-3


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
    with pytest.raises(TypeError):
        MetricAccumulator()  # type: ignore[call-arg]


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
    spec = MetricSpec(name="psnr", data_range="1", higher_is_better=True)
    assert spec.column == "psnr[range=1]"
    with pytest.raises(Exception):
        spec.name = "ssim"  # type: ignore[misc]


def test_accumulator_summary_matches_direct_and_skimage() -> None:
    pred_np, target_np, pred, target = _batch((24, 24), 6, smooth=True, seed=11)
    acc = MetricAccumulator(data_range=1.0)
    acc.update(pred[:4], target[:4], [f"s{i}" for i in range(4)])
    acc.update(pred[4:], target[4:], ["s4", "s5"])
    summary = acc.summary()
    assert summary["psnr[range=1]"] == pytest.approx(float(psnr(pred, target, 1.0).mean()), abs=1e-9)
    assert summary["ssim[range=1]"] == pytest.approx(float(ssim(pred, target, 1.0).mean()), abs=1e-9)
    assert summary["mae"] == pytest.approx(float((pred.double() - target.double()).abs().mean()), abs=1e-9)
    pooled_ref = peak_signal_noise_ratio(target.numpy(), pred.numpy(), data_range=1.0)
    assert summary["psnr_pooled[range=1]"] == pytest.approx(pooled_ref, abs=1e-4)
    assert summary["n_samples"] == 6
    assert summary["target_min"] == pytest.approx(float(target.min()))
    assert summary["target_max"] == pytest.approx(float(target.max()))
    rows = acc.rows()
    assert [r["sample_id"] for r in rows] == [f"s{i}" for i in range(6)]
    assert set(rows[0]) == {"sample_id", "psnr[range=1]", "ssim[range=1]", "mae"}
    assert [c.higher_is_better for c in acc.columns()] == [True, True, False]


def test_accumulator_states_merge_like_one_process() -> None:
    """Two 'ranks' with unequal sample counts: summed state == single accumulator (not mean of means)."""
    _, _, pred, target = _batch((20, 20), 5, smooth=False, seed=2)
    single = MetricAccumulator(data_range="per_image")
    single.update(pred, target, list("abcde"))
    rank0, rank1 = MetricAccumulator("per_image"), MetricAccumulator("per_image")
    rank0.update(pred[:1], target[:1], ["a"])
    rank1.update(pred[1:], target[1:], list("bcde"))
    merged = merge_states([rank0.state(), rank1.state()])
    got, want = rank0.summary(merged), single.summary()
    assert got.keys() == want.keys()
    assert "psnr_pooled[range=per_image]" not in got  # pooled PSNR only for a fixed range
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12)
    naive = 0.5 * (rank0.summary()["psnr[range=per_image]"] + rank1.summary()["psnr[range=per_image]"])
    assert abs(naive - want["psnr[range=per_image]"]) > 1e-3


def test_accumulator_volumes_and_visible_range_mismatch() -> None:
    # X2CT-GAN style: data in [0, 2500] scored with range 4095 -> accepted, but the summary shows it
    target = torch.rand(2, 1, 12, 12, 12) * 2500.0
    pred = target + 50.0 * torch.randn_like(target)
    acc = MetricAccumulator(data_range=4095.0, volume_ssim="slicewise")
    acc.update(pred, target, ["v0", "v1"])
    summary = acc.summary()
    assert "ssim_slicewise[range=4095]" in summary
    assert summary["target_max"] <= 2500.0
    acc3d = MetricAccumulator(data_range=4095.0)
    acc3d.update(pred, target, ["v0", "v1"])
    assert acc3d.summary()["ssim[range=4095]"] == pytest.approx(float(ssim(pred, target, 4095.0).mean()))
    with pytest.raises(ValueError, match="mixed"):
        acc3d.update(pred[:, :, 0], target[:, :, 0], ["a", "b"])
    with pytest.raises(ValueError, match="no samples"):
        MetricAccumulator(1.0).summary()


def test_metrics_keep_the_device_and_do_not_track_grad() -> None:
    pred = torch.rand(2, 1, 16, 16, requires_grad=True)
    target = torch.rand(2, 1, 16, 16)
    out = psnr(pred, target, 1.0)
    assert out.device == pred.device and not out.requires_grad
    assert metrics.ssim_window_size() == 11


def test_empty_accumulator_state_is_neutral_for_the_reduction() -> None:
    _, _, pred, target = _batch((16, 16), 2, smooth=False, seed=4)
    busy, idle = MetricAccumulator(1.0), MetricAccumulator(1.0)
    busy.update(pred, target, ["a", "b"])
    merged = merge_states([busy.state(), idle.state(device="cpu")])
    assert busy.summary(merged) == busy.summary()
