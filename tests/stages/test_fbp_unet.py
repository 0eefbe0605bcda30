"""Experiment 4 (stage ``fbp_unet``): frozen FBP + UNet, composite loss, segments, final evaluation.

Tiny geometry (32^2 px, 24 angles) and the tiny UNet preset. The loss terms themselves are tested in
tests/test_losses.py; here: only the UNet learns, the experiment-1 window is carried over exactly, missing VGG
weights / too small MS-SSIM inputs fail before training, and a 2-segment run trains, resumes exactly and
writes the rows ``ctpipe aggregate`` puts side by side.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctpipe.checkpoint import BEST, load_checkpoint
from ctpipe.config import build_config, load_json
from ctpipe.distributed import DistEnv
from ctpipe.models.vgg_features import ENV_VAR, VGG16_FILE_NAME, write_random_vgg16_weights
from ctpipe.ops.filters import filter_frequencies, window_values
from ctpipe.report import aggregate
from ctpipe.runner import run_stage, stage_config_path
from ctpipe.schedules import EpochScheduler
from ctpipe.stages.fbp_unet import FBPUNetConfig, FBPUNetTask, load_window_checkpoint
from ctpipe.train import TrainStepper, collate

CPU = torch.device("cpu")
PSNR = "psnr[range=1]"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctpipe.data.lodopab import prep_lodopab
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    root = tmp_path_factory.mktemp("fbp_unet_data")
    geometry = ParallelBeamGeometry.lodopab().scaled(32, 24)
    write_synthetic_lodopab(root / "raw", n=40, size="small", seed=5, samples_per_file=16, geometry=geometry,
                            progress=False)
    prep_lodopab(root / "raw", root / "shards", progress=False)
    return root / "shards"


def tiny_overrides(shards: Path, *extra: str) -> list[str]:
    return [f"data.root={shards}", "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0",
            "train.device=cpu", "train.epochs=2", "train.segment_epochs=null", "train.log_every=1000",
            "train.early_stopping_patience=null", "model.size=tiny", "loss.ms_ssim_fallback=ssim", *extra]


@pytest.fixture(scope="module")
def exp1_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished experiment-1 run (learned window) with its own final evaluation."""
    run_dir = tmp_path_factory.mktemp("exp1") / "run"
    overrides = [f"data.root={shards}", "data.batch_size=4", "data.num_workers=0", "train.device=cpu",
                 "train.epochs=1", "train.log_every=1000", "optim.lr=0.05"]
    assert run_stage("fbp_window", run_dir, overrides).status == "completed"
    return run_dir


def build_task(shards: Path, *extra: str) -> FBPUNetTask:
    cfg = build_config(FBPUNetConfig, load_json(stage_config_path("fbp_unet")), tiny_overrides(shards, *extra))
    torch.manual_seed(0)
    return FBPUNetTask(cfg, DistEnv(), CPU)


def test_composite_loss_gradient_reaches_only_the_unet(shards: Path, exp1_run: Path) -> None:
    # zero_init_output=false: with a zero last layer the first step only moves that layer
    best = exp1_run / "checkpoints" / BEST
    task = build_task(shards, f"model.window_checkpoint={best}", "model.zero_init_output=false")
    fbp_params = list(task.fbp.parameters())
    assert fbp_params and not any(p.requires_grad for p in fbp_params)  # a learnable window, frozen
    optimized = {id(p) for group in task.optimizers["unet"].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in task.unet.parameters()}
    fbp_before = {k: v.clone() for k, v in task.fbp.state_dict().items()}
    unet_before = {k: v.clone() for k, v in task.unet.named_parameters()}
    schedulers = {"unet": EpochScheduler(task.optimizers["unet"], task.cfg.scheduler, 1, 1)}
    stepper = TrainStepper(task.cfg.train, CPU, task.optimizers, schedulers, task.modules)
    batch = collate([task.train_set[i] for i in range(4)])
    assert not task.fbp_image(batch["sinogram"]).requires_grad  # no backprojection graph is built
    task.unet.train()
    terms = task.train_step(batch, stepper)
    assert set(terms) == {"loss", "l1", "ssim", "edge"}
    assert all(p.grad is None for p in fbp_params)
    for key, value in task.fbp.state_dict().items():
        assert torch.equal(value, fbp_before[key]), key
    changed = [k for k, p in task.unet.named_parameters() if not torch.equal(p, unet_before[k])]
    # Conv biases in front of a batch norm get exactly zero gradient; every weight must move.
    weights = [k for k in unet_before if k.endswith("weight")]
    assert set(weights) <= set(changed)


def test_window_from_experiment1_checkpoint_is_that_window(shards: Path, exp1_run: Path, tmp_path: Path) -> None:
    best = exp1_run / "checkpoints" / BEST
    saved = load_checkpoint(best)["models"]["model"]
    task = build_task(shards, f"model.window_checkpoint={best}")
    for name, value in task.fbp.window.state_dict().items():
        assert torch.equal(value, saved[f"window.{name}"]), name
    freqs = filter_frequencies(task.geometry.n_detector, True, dtype=torch.float64)
    hann = window_values("hann", freqs, 0.641)
    assert not torch.allclose(task.fbp.window(freqs), hann, atol=1e-4)  # experiment 1 did move the window

    # End to end: the learned_window row of experiment 4 reproduces experiment 1's own evaluation.
    run_dir = tmp_path / "run"
    result = run_stage("fbp_unet", run_dir, tiny_overrides(shards, "train.epochs=1", f"model.window_checkpoint={best}"))
    assert result.status == "completed"
    for model in ("fbp_hann", "learned_window"):
        ours = pd.read_csv(run_dir / "eval" / "test" / f"{model}.csv")
        theirs = pd.read_csv(exp1_run / "eval" / "test" / f"{model}.csv")
        assert list(ours.sample_id) == list(theirs.sample_id)
        assert ours[PSNR].to_numpy() == pytest.approx(theirs[PSNR].to_numpy(), abs=1e-4), model
    assert (run_dir / "eval" / "test" / "fbp_unet.csv").exists()
    # In the tables the re-scored window is a reference row of experiment 4 (not trained there: 0 epochs),
    # and experiment 1's trained model in experiment 1's run.
    shutil.copytree(run_dir, tmp_path / "runs" / "fbp_unet" / "exp4")
    shutil.copytree(exp1_run, tmp_path / "runs" / "fbp_window" / "exp1")
    summary = pd.read_csv(aggregate(tmp_path / "runs", tmp_path / "results")["summary"])
    window = summary[(summary.model == "learned_window") & (summary.split == "test")].set_index("stage")
    assert (window.loc["fbp_unet", "experiment"], window.loc["fbp_unet", "epochs"]) == ("baseline", 0)
    assert window.loc["fbp_window", "experiment"] == "exp1_learned_window" and window.loc["fbp_window", "epochs"] > 0
    assert summary[(summary.model == "fbp_unet")].experiment.unique().tolist() == ["exp4_fbp_unet"]

    with pytest.raises(ValueError, match="model.padding=true"):
        load_window_checkpoint(best, padding=False)
    with pytest.raises(FileNotFoundError, match="train experiment 1 first"):
        load_window_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not an experiment-1"):
        load_window_checkpoint(run_dir / "checkpoints" / BEST)


def test_missing_vgg_weights_fail_before_training(shards: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    missing = tmp_path / "nowhere" / VGG16_FILE_NAME
    overrides = tiny_overrides(shards, "loss.perceptual=0.1", f"loss.vgg_weights_path={missing}")
    message = f"(?s){re.escape(str(missing))}.*does not exist.*{ENV_VAR}.*perceptual loss weight to 0"
    with pytest.raises(FileNotFoundError, match=message):
        run_stage("fbp_unet", tmp_path / "run", overrides)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "history.csv").exists()

    from ctpipe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "fbp_unet", "--run-dir", str(tmp_path / "cli_run"), *overrides])
    assert exit_info.value.code == 2
    assert VGG16_FILE_NAME in capsys.readouterr().err


def test_ms_ssim_on_too_small_images_fails_at_build_time(shards: Path) -> None:
    with pytest.raises(ValueError, match="ms_ssim_fallback='ssim'"):
        build_task(shards, "loss.ms_ssim=0.5", "loss.ms_ssim_fallback=null")


def test_two_segments_train_resume_exactly_and_aggregate(shards: Path, exp1_run: Path, tmp_path: Path) -> None:
    vgg = write_random_vgg16_weights(tmp_path / VGG16_FILE_NAME, layer="relu2_2")
    overrides = tiny_overrides(shards, "train.segment_epochs=1", "loss.perceptual=0.01", f"loss.vgg_weights_path={vgg}")
    run_dir = tmp_path / "runs" / "fbp_unet" / "segmented"
    first = run_stage("fbp_unet", run_dir, overrides)
    assert first.status == "segment_done" and first.epoch == 1
    assert not (run_dir / "eval").exists()  # evaluated only once training is complete
    second = run_stage("fbp_unet", run_dir, overrides)
    assert second.status == "completed" and second.epoch == 2

    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.epoch) == [1, 2]
    for column in ("train_loss", "train_l1", "train_ssim", "train_edge", "train_perceptual", "val_loss",
                   "val_loss_l1", "val_loss_ssim", "val_loss_edge", "val_loss_perceptual", "val_psnr[range=1]",
                   "val_psnr[range=per_image]", "val_ssim[range=1]", "val_mae"):
        assert column in history.columns, column
    weighted = history.train_l1 + 0.5 * history.train_ssim + 0.1 * history.train_edge + 0.01 * history.train_perceptual
    assert history.train_loss.to_numpy() == pytest.approx(weighted.to_numpy(), rel=1e-5)
    assert history.train_loss[1] < history.train_loss[0]

    # The task keeps no hidden state: two segments give the same history as one uninterrupted call.
    straight = tmp_path / "straight"
    straight_result = run_stage("fbp_unet", straight, [*overrides, "train.segment_epochs=null"], evaluate=False)
    assert straight_result.status == "completed"
    assert (straight / "history.csv").read_bytes() == (run_dir / "history.csv").read_bytes()

    shutil.copytree(exp1_run, tmp_path / "runs" / "fbp_window" / "exp1")
    outputs = aggregate(tmp_path / "runs", tmp_path / "results")
    summary = pd.read_csv(outputs["summary"])
    ours = summary[summary.stage == "fbp_unet"]
    expected_rows = {(m, s) for m in ("fbp_hann", "fbp_unet") for s in ("validation", "test")}
    assert set(zip(ours.model, ours.split)) == expected_rows
    assert set(ours[ours.model == "fbp_hann"].experiment) == {"baseline"}
    assert set(ours[ours.model == "fbp_unet"].experiment) == {"exp4_fbp_unet"}
    # The frozen Hann FBP of experiment 4 scores exactly like experiment 1's independent baseline.
    hann = summary[(summary.model == "fbp_hann") & (summary.split == "test")].set_index("stage")[PSNR]
    assert hann["fbp_unet"] == pytest.approx(hann["fbp_window"], abs=1e-4)
