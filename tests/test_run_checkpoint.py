"""RunCheckpoint: the typed view of a real checkpoint of a tiny run; the stage's load_trained and the
evaluation's role column, read back by ``report`` from the files alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctpipe.checkpoint import BEST, LATEST, load_checkpoint, read_run_checkpoint, save_checkpoint
from ctpipe.data.datasets import ShardDataset
from ctpipe.report import aggregate
from ctpipe.runner import run_stage
from ctpipe.stages import get_stage
from ctpipe.stages.fbp_window import FBPWindowConfig
from ctpipe.stages.lodopab_common import lodopab_metrics

TINY = ["data.batch_size=4", "train.epochs=2", "train.early_stopping_patience=null", "data.num_workers=0",
        "train.device=cpu"]


@pytest.fixture(scope="module")
def run(tiny_lodopab: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "fbp_window" / "tiny"
    assert run_stage("fbp_window", run_dir, [f"data.root={tiny_lodopab}", *TINY]).status == "completed"
    return run_dir


def test_round_trip_of_a_real_checkpoint(run: Path) -> None:
    path = run / "checkpoints" / LATEST
    raw = load_checkpoint(path)
    view = read_run_checkpoint(path)
    assert view.path == path and view.stage == "fbp_window"
    assert view.config == json.loads((run / "config.json").read_text()) == json.loads(raw["config"])
    assert view.fingerprint == json.loads(raw["fingerprint"]) and "geometry" in view.fingerprint
    assert view.inference == {}  # fbp_window records no grid or prep for inference
    assert (view.epoch, view.global_step) == (raw["epoch"], raw["global_step"]) == (2, raw["global_step"])
    assert view.global_step > 0
    assert view.models.keys() == raw["models"].keys() == {"model"}
    for key, value in raw["models"]["model"].items():
        assert torch.equal(view.models["model"][key], value), key
    typed = view.typed_config(FBPWindowConfig)
    assert isinstance(typed, FBPWindowConfig) and typed.data.root == view.config["data"]["root"]
    assert typed.train.epochs == 2


def test_a_checkpoint_without_config_reads_its_run_folder_and_other_stages_are_refused(run: Path,
                                                                                      tmp_path: Path) -> None:
    state = load_checkpoint(run / "checkpoints" / LATEST)
    copy = tmp_path / "copy"
    shutil.copy(run / "config.json", tmp_path / "config.json")  # RUN/config.json for RUN/copy/x.pt
    save_checkpoint({**state, "config": ""}, copy / "x.pt")
    assert read_run_checkpoint(copy / "x.pt").config == json.loads((run / "config.json").read_text())
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="records no config"):
        read_run_checkpoint(copy / "x.pt")
    with pytest.raises(ValueError, match="is a 'fbp_window' checkpoint, not a 'stage1_64' one"):
        get_stage("stage1_64").load_trained(run / "checkpoints" / LATEST)


def test_load_trained_reproduces_the_evaluated_model_and_rows_record_their_role(run: Path) -> None:
    model = get_stage("fbp_window").load_trained(run / "checkpoints" / BEST)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    cfg = read_run_checkpoint(run / "checkpoints" / BEST).typed_config(FBPWindowConfig)
    test_set = ShardDataset(cfg.data.root, cfg.data.test_split, ("sinogram", "image"))
    with torch.no_grad():
        psnr = [float(lodopab_metrics(model(s["sinogram"][None]), s["image"][None])["psnr[range=1]"][0])
                for s in (test_set[i] for i in range(len(test_set)))]
    learned = pd.read_csv(run / "eval" / "test" / "learned_window.csv")
    assert learned["psnr[range=1]"].tolist() == pytest.approx(psnr, abs=1e-4)
    assert set(learned.role) == {"trained"}
    assert set(pd.read_csv(run / "eval" / "test" / "fbp_hann.csv").role) == {"baseline"}


def test_report_takes_the_role_from_the_table_and_falls_back_for_older_tables(run: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "fbp_window" / "renamed")
    table = runs / "fbp_window" / "renamed" / "eval" / "test" / "fbp_hann.csv"
    frame = pd.read_csv(table)
    frame["role"] = "trained"  # the file says so: report must follow it, whatever the model is called
    frame.to_csv(table, index=False)
    summary = pd.read_csv(aggregate(runs, tmp_path / "out")["summary"])
    test = summary[summary.split == "test"].set_index("model")
    assert test.loc["fbp_hann", "experiment"] == "exp1_learned_window"
    assert test.loc["learned_window", "experiment"] == "exp1_learned_window"
    for csv in (runs / "fbp_window" / "renamed" / "eval").glob("*/*.csv"):  # tables from before the column
        pd.read_csv(csv).drop(columns="role").to_csv(csv, index=False)
    summary = pd.read_csv(aggregate(runs, tmp_path / "out2")["summary"])
    test = summary[summary.split == "test"].set_index("model")
    assert (test.loc["fbp_hann", "experiment"], test.loc["learned_window", "experiment"]) == \
        ("baseline", "exp1_learned_window")
