"""refine_256: before training its rows equal the trilinear baseline exactly; after training it is not worse."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from ctpipe.config import ConfigError, build_config, load_json
from ctpipe.distributed import DistEnv
from ctpipe.paths import stage_configs_dir
from ctpipe.runner import run_stage
from ctpipe.stages.refine_256 import Refine256StageConfig, Refine256Task
from ctpipe.stages.xray2ct_common import PSNR_COLUMN, SSIM_COLUMN
from tests.stages.test_stage1_64 import TINY, make_xray_shards, quick_stage1

METRICS = [PSNR_COLUMN, SSIM_COLUMN, "mae", "mae_hu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("refine")
    shards = make_xray_shards(root)
    stage1 = quick_stage1(shards, root / "runs" / "stage1_64" / "quick", steps=3)
    overrides = [f"data.root={shards}", *TINY, f"stage1_checkpoint={stage1}", "loss.scale_weights=[0.5,1.0]"]
    return root, stage1, overrides


def rows(run: Path, model: str) -> pd.DataFrame:
    return pd.read_csv(run / "eval" / "validation" / f"{model}.csv")


def test_untrained_refine_equals_trilinear_and_training_does_not_hurt(setup, tmp_path: Path) -> None:
    root, _, overrides = setup
    zero = tmp_path / "zero"
    run_stage("refine_256", zero, [*overrides, "train.epochs=0"])
    baseline, refined = rows(zero, "stage1_64_trilinear"), rows(zero, "refine_256")
    assert set(refined.eval_size) == {32} and len(refined) == 2  # 2 validation patients (0.8 / 0.1 / 0.1 of 10)
    for name in ("mean_volume", "nearest_xray"):  # the baselines, on the refined grid, on both splits
        for split in ("validation", "test"):
            assert set(pd.read_csv(zero / "eval" / split / f"{name}.csv").eval_size) == {32}
    pd.testing.assert_frame_equal(baseline[METRICS], refined[METRICS])  # zero-initialised heads: bit for bit

    trained = tmp_path / "trained"
    result = run_stage("refine_256", trained, [*overrides, "train.epochs=2", "optim.lr=1e-3"])
    assert result.status == "completed"
    baseline2, refined2 = rows(trained, "stage1_64_trilinear"), rows(trained, "refine_256")
    pd.testing.assert_frame_equal(baseline[METRICS], baseline2[METRICS])  # the frozen stage 1 did not move
    assert refined2[PSNR_COLUMN].mean() >= baseline2[PSNR_COLUMN].mean()
    assert refined2["mae"].mean() <= baseline2["mae"].mean()
    assert not refined2[METRICS].equals(baseline2[METRICS])  # it did train


def test_stage1_is_frozen_and_fingerprinted(setup) -> None:
    root, stage1, overrides = setup
    cfg = build_config(Refine256StageConfig, load_json(stage_configs_dir() / "refine_256.json"), overrides)
    task = Refine256Task(cfg, DistEnv(), torch.device("cpu"))
    assert not any(p.requires_grad for p in task.stage1.parameters()) and not task.stage1.training
    trained = {id(p) for g in task.optimizers["refine"].param_groups for p in g["params"]}
    assert trained == {id(p) for p in task.model.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in task.model.up4.parameters())  # 2x target: the 4x branch is frozen
    assert len(task.fingerprint["stage1_sha256"]) == 64 and task.fingerprint["output_size"] == 32
    assert "stage1_64" not in task.modules and set(task.modules) == {"refine"}


def test_refine_config_errors(setup, tmp_path: Path) -> None:
    _, _, overrides = setup
    with pytest.raises(FileNotFoundError, match="train stage1_64 first"):
        run_stage("refine_256", tmp_path / "a", [*overrides, f"stage1_checkpoint={tmp_path / 'none.pt'}"])
    with pytest.raises(ConfigError, match="refines 16\\^3"):
        run_stage("refine_256", tmp_path / "b", [*overrides, "data.high_field=volume_16"])
    seeds = build_config(Refine256StageConfig, load_json(stage_configs_dir() / "refine_256_seeds.json"))
    assert seeds.experiment == "refine_256_seeds" and seeds.loss.scale_weights == (1.0,)  # 002: final scale only
