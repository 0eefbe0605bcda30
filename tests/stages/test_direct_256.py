"""direct_256: a tiny run trains (validation PSNR rises); stage-1 initialisation; the four-row comparison table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctpipe.config import build_config, load_json
from ctpipe.distributed import DistEnv
from ctpipe.paths import stage_configs_dir
from ctpipe.report import aggregate
from ctpipe.runner import run_stage
from ctpipe.stages.direct_256 import Direct256StageConfig, Direct256Task, tiny_direct_config
from ctpipe.stages import STAGES
from ctpipe.stages.xray2ct_common import PSNR_COLUMN
from tests.stages.test_stage1_64 import TINY, make_xray_shards


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("direct")
    shards = make_xray_shards(root)
    base = [f"data.root={shards}", *TINY]
    run_stage("stage1_64", root / "runs" / "stage1_64" / "a", [*base, "train.epochs=2", "optim.lr=3e-3"])
    return root, shards


def test_direct_trains_from_stage1_and_the_table_has_four_models(runs) -> None:
    root, shards = runs
    stage1 = root / "runs" / "stage1_64" / "a" / "checkpoints" / "best.pt"
    base = [f"data.root={shards}", *TINY]
    run = root / "runs" / "direct_256" / "a"
    result = run_stage("direct_256", run, [*base, "train.epochs=3", "optim.lr=3e-3", f"init_from_stage1={stage1}",
                                           "train.gradient_checkpointing=true"])
    assert result.status == "completed"
    history = pd.read_csv(run / "history.csv")
    assert history[f"val_{PSNR_COLUMN}"].iloc[-1] > history[f"val_{PSNR_COLUMN}"].iloc[0]
    direct = pd.read_csv(run / "eval" / "validation" / "direct_256.csv")
    assert set(direct.eval_size) == {32} and len(direct) == 2  # 2 validation patients (0.8 / 0.1 / 0.1 of 10)

    run_stage("refine_256", root / "runs" / "refine_256" / "a",
              [*base, f"stage1_checkpoint={stage1}", "loss.scale_weights=[0.5,1.0]", "train.epochs=0"])
    outputs = aggregate(root / "runs", root / "results")
    summary = pd.read_csv(outputs["summary"])
    val = summary[summary.split == "validation"]
    assert {"stage1_64", "stage1_64_trilinear", "refine_256", "direct_256"} <= set(val.model)
    assert set(val[val.model == "stage1_64_trilinear"].experiment) == {"baseline"}
    sizes = dict(zip(val.model, val.eval_size))
    assert sizes["stage1_64"] == 16 and sizes["refine_256"] == sizes["direct_256"] == sizes["stage1_64_trilinear"] == 32
    # the same baseline scored in the stage-1 run and in the refine run gives the same number
    tri = val[val.model == "stage1_64_trilinear"][PSNR_COLUMN]
    assert tri.max() - tri.min() < 1e-6
    # every route, at 16^3 and at 32^3, carries its margin over the better trivial baseline of its run and grid
    direct_row = val[val.model == "direct_256"].iloc[0]
    assert direct_row.best_baseline in ("mean_volume", "nearest_xray")
    same = val[(val.run == direct_row.run) & (val.model == direct_row.best_baseline)].iloc[0]
    assert direct_row[f"margin_over_best_baseline[{PSNR_COLUMN}]"] == pytest.approx(
        direct_row[PSNR_COLUMN] - same[PSNR_COLUMN], abs=1e-3)


def test_stage1_initialisation_copies_the_backbone(runs) -> None:
    root, shards = runs
    stage1_path = root / "runs" / "stage1_64" / "a" / "checkpoints" / "best.pt"
    cfg = build_config(Direct256StageConfig, load_json(stage_configs_dir() / "direct_256.json"),
                       [f"data.root={shards}", *TINY, f"init_from_stage1={stage1_path}"])
    task = Direct256Task(cfg, DistEnv(), torch.device("cpu"))
    stage1 = STAGES["stage1_64"].load_trained(stage1_path).model
    mine = task.model.state_dict()
    for key, value in stage1.state_dict().items():
        if key.startswith(("encoder.", "transformer.")):
            assert torch.equal(mine[key], value), key
    assert task.network == dataclasses.replace(tiny_direct_config(32), gradient_checkpointing=True)  # from the JSON
    assert task.fingerprint["output_size"] == 32
