"""stage1_64: tiny end-to-end run on synthetic CT -> DRR shards, evaluation rows, multi-scale heads, configs.

The helpers at the top (synthetic shard set, tiny overrides, a quick stage-1 checkpoint) are shared with the
refine_256 / direct_256 / inference tests. Sizes: 32^3 phantoms -> 32^2 DRRs, ``volume_16`` (stage-1 grid, the
tiny network) and ``volume_32`` (the "high" grid standing in for 256^3).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctpipe.config import ConfigError, build_config, load_json
from ctpipe.losses import VolumeLoss, VolumeLossConfig, ssim3d
from ctpipe.models.xray2ct import XRAY2CT_TINY, XRay2CT64
from ctpipe.paths import stage_configs_dir
from ctpipe.runner import run_stage
from ctpipe.models.stage1_net import Stage1Net
from ctpipe.stages.stage1_64 import Stage1Config
from ctpipe.stages.xray2ct_common import PSNR_COLUMN, SSIM_COLUMN, Stage1ModelConfig, resolve_stage1_network

TINY = ["model.preset=tiny", "data.volume_field=volume_16", "data.high_field=volume_32", "train.device=cpu",
        "train.amp=none", "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0", "train.log_every=1000",
        "train.grad_clip=null"]


def make_xray_shards(root: Path, n: int = 10) -> Path:
    """``n`` synthetic CTs (32^3, 10 mm) -> shard set with 32^2 DRRs and volume_16 / volume_32 targets."""
    from ctpipe.data.drr_prep import prep_drr
    from ctpipe.data.synthetic_ct import write_synthetic_ct

    write_synthetic_ct(root / "ct", n, size=32, spacing_mm=10.0, seed=3)
    prep_drr(root / "ct", root / "shards", xray_size=32, volume_sizes=(16, 32))
    return root / "shards"


def quick_stage1(shards: Path, run_dir: Path, steps: int = 2) -> Path:
    """A stage-1 checkpoint after a couple of steps (no final evaluation): input for refine/direct/infer tests."""
    run_stage("stage1_64", run_dir, [f"data.root={shards}", *TINY, "train.epochs=1",
                                     f"train.max_steps_per_epoch={steps}", "optim.lr=3e-3"], evaluate=False)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_xray_shards(tmp_path_factory.mktemp("xray2ct"))


def test_tiny_stage1_run_improves_and_writes_both_rows(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "stage1_64" / "tiny"
    result = run_stage("stage1_64", run, [f"data.root={shards}", *TINY, "train.epochs=4", "optim.lr=3e-3"])
    assert result.status == "completed" and result.epoch == 4
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 4
    assert history[f"val_{PSNR_COLUMN}"].iloc[-1] > history[f"val_{PSNR_COLUMN}"].iloc[0] + 1.0
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]

    ev = run / "eval" / "validation"
    low, high = pd.read_csv(ev / "stage1_64.csv"), pd.read_csv(ev / "stage1_64_trilinear.csv")
    assert set(low.eval_size) == {16} and set(high.eval_size) == {32}
    assert list(low.sample_id) == list(high.sample_id) and len(low) == 2  # 0.8 / 0.1 / 0.1 of 10 patients: 7 / 2 / 1
    for split in ("validation", "test"):  # the held-out test split is evaluated too, beside the baselines
        folder = run / "eval" / split
        for name, size in (("stage1_64", 16), ("mean_volume", 16), ("nearest_xray", 16), ("mean_volume_32", 32),
                           ("nearest_xray_32", 32), ("stage1_64_trilinear", 32)):
            frame = pd.read_csv(folder / f"{name}.csv")
            assert set(frame.eval_size) == {size} and len(frame) == {"validation": 2, "test": 1}[split]
    for frame in (low, high):
        assert set(frame.hu_window_low) == {-1024.0} and set(frame.hu_window_high) == {1476.0}
        np.testing.assert_allclose(frame.mae_hu, frame.mae * 2500.0)
        assert frame[SSIM_COLUMN].between(-1, 1).all()
    assert (ev / "stage1_64_slices.png").stat().st_size > 1000
    assert (ev / "stage1_64_trilinear_slices.png").stat().st_size > 1000

    # examples.npz holds the high-grid rows: recompute the first PSNR (data_range=1) independently
    examples = np.load(ev / "examples.npz")
    pred, target = examples["stage1_64_trilinear"][0].astype(np.float64), examples["target"][0].astype(np.float64)
    assert pred.shape == (32, 32, 32)
    expected = 10 * math.log10(1.0 / np.mean((np.clip(pred, 0, 1) - target) ** 2))
    assert high[PSNR_COLUMN].iloc[0] == pytest.approx(expected, abs=1e-4)


def test_multiscale_heads_keep_the_final_output() -> None:
    torch.manual_seed(0)
    net = Stage1Net(XRAY2CT_TINY, n_aux=1)
    plain = XRay2CT64(XRAY2CT_TINY)
    plain.load_state_dict({k[4:]: v for k, v in net.state_dict().items() if k.startswith("net.")})
    xray = torch.rand(2, 2, 32, 32)
    outputs = net(xray)
    assert sorted(outputs) == [8, 16]
    assert torch.allclose(outputs[16], plain(xray), atol=1e-6)
    assert outputs[8].min() > 0 and outputs[8].max() < 1  # sigmoid heads
    with pytest.raises(ConfigError, match="auxiliary heads"):
        Stage1Net(XRAY2CT_TINY, n_aux=2)  # the tiny decoder has 2 stages: at most 1 auxiliary head


def test_multiscale_loss_weights_the_scales() -> None:
    torch.manual_seed(1)
    target = torch.rand(2, 1, 16, 16, 16)
    outputs = {8: torch.rand(2, 1, 8, 8, 8), 16: torch.rand(2, 1, 16, 16, 16)}
    coarse_target = torch.nn.functional.avg_pool3d(target, 2)
    loss = VolumeLoss(VolumeLossConfig(l1=1.0, ssim3d=0.5, scale_weights=(0.25, 1.0)))
    total, logged = loss.multiscale(outputs, target)
    fine = (outputs[16] - target).abs().mean() + 0.5 * (1 - ssim3d(outputs[16], target).mean())
    coarse = (outputs[8] - coarse_target).abs().mean()  # 8^3 < 11: no SSIM term on that scale
    assert float(total) == pytest.approx(float(fine + 0.25 * coarse), rel=1e-6)
    assert set(logged) == {"l1", "ssim3d", "loss"}
    per_sample = loss.per_sample(outputs[16], target)
    assert float(per_sample.mean()) == pytest.approx(float(fine), rel=1e-6)


def test_configs_load_and_model_presets() -> None:
    for name, n_scales, perceptual in (("stage1_64", 1, 0.0), ("stage1_64_enhanced", 3, 0.1),
                                       ("stage1_64_enhanced_003", 3, 0.2)):
        cfg = build_config(Stage1Config, load_json(stage_configs_dir() / f"{name}.json"))
        assert cfg.experiment == name and len(cfg.loss.scale_weights) == n_scales
        assert cfg.train.amp == "bf16" and cfg.optim.name == "adamw" and cfg.scheduler.name == "cosine"
        assert cfg.loss.l1 == 1.0 and cfg.loss.ssim3d == 0.5 and cfg.loss.perceptual == perceptual
    assert resolve_stage1_network(Stage1ModelConfig("tiny"), True) == dataclasses.replace(
        XRAY2CT_TINY, gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="needs model.network"):
        resolve_stage1_network(Stage1ModelConfig("custom"))
    with pytest.raises(ConfigError, match="only used with"):
        resolve_stage1_network(Stage1ModelConfig("tiny", XRAY2CT_TINY))


def test_mismatched_shard_set_is_refused(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16\\^3 volumes but the network outputs 64\\^3"):
        run_stage("stage1_64", tmp_path / "bad", [f"data.root={shards}", *TINY, "model.preset=custom",
                                                  "model.network={\"xray_size\": 32, \"encoder_channels\": [8, 16]}"])
    with pytest.raises(ConfigError, match="HU window"):
        run_stage("stage1_64", tmp_path / "bad2", [f"data.root={shards}", *TINY, "data.hu_window=[-1000, 1000]"])


def test_tensorboard_gets_scalars_and_the_validation_example(shards: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb_run"
    run_stage("stage1_64", run, [f"data.root={shards}", *TINY, "train.epochs=2", "train.max_steps_per_epoch=2",
                                 "train.tensorboard=true"], evaluate=False)
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [1, 2]
    for name in ("target", "prediction"):  # the middle axial slice of the first validation volume
        images = events.Images(f"validation/{name}")
        assert [(i.step, i.width, i.height) for i in images] == [(1, 16, 16), (2, 16, 16)]
