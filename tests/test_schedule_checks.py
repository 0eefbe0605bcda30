"""A monitor_mode that contradicts the monitored metric's direction is refused when the config is built."""

from __future__ import annotations

import pytest

from ctpipe.config import ConfigError, build_config
from ctpipe.metrics import higher_is_better
from ctpipe.stages.fbp_window import FBPWindowConfig


def test_metric_directions_from_column_names() -> None:
    assert higher_is_better("val_psnr[range=1]") is True
    assert higher_is_better("ssim[range=per_image]") is True
    assert higher_is_better("psnr_hu[range=4095]") is True and higher_is_better("ssim2d_norm[range=1]") is True
    assert higher_is_better("val_loss") is False and higher_is_better("val_loss_ssim") is False
    assert higher_is_better("mae_hu") is False and higher_is_better("train_mse") is False
    assert higher_is_better("val_samples_per_s") is None


@pytest.mark.parametrize("monitor, mode", [("val_psnr[range=1]", "min"), ("val_loss", "max")])
def test_contradicting_monitor_mode_is_refused_with_the_fix(monitor: str, mode: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(FBPWindowConfig, {}, [f"train.monitor={monitor}", f"train.monitor_mode={mode}"])
    fix = "max" if mode == "min" else "min"
    assert f"set train.monitor_mode={fix}" in str(err.value) and "worst epoch" in str(err.value)


@pytest.mark.parametrize("monitor, mode", [("val_psnr[range=1]", "max"), ("val_loss", "min"),
                                           ("val_custom_score", "max"), ("val_custom_score", "min")])
def test_matching_or_unknown_monitor_is_accepted(monitor: str, mode: str) -> None:
    cfg = build_config(FBPWindowConfig, {}, [f"train.monitor={monitor}", f"train.monitor_mode={mode}"])
    assert (cfg.train.monitor, cfg.train.monitor_mode) == (monitor, mode)
