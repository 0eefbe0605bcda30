"""`ctpipe submit pipeline xray2ct | phases` and lodopab's learned-window chain on the submitit local executor
(the same job objects a SLURM submission queues; there the steps run in order). The SLURM side is in
tests/slurm/test_pipeline_families.py."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from ctpipe.cli import main
from ctpipe.pipeline import plan_pipeline


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("CTPIPE_DATA", "CTPIPE_RUNS", "CTPIPE_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_lodopab_chain_plans_the_learned_window_before_its_unet(workdir: Path) -> None:
    plan = plan_pipeline("lodopab", stages=["fbp_window", "fbp_unet"], preset="cpu-tiny")
    steps = {s.key: s for s in plan.steps}
    assert list(steps) == ["fbp_window", "fbp_unet/learned_window", "fbp_unet/hann"]
    assert steps["fbp_unet/learned_window"].uses == (("model.window_checkpoint", "fbp_window"),)
    assert steps["fbp_unet/hann"].uses == ()
    with pytest.raises(ValueError, match="add that stage"):
        plan_pipeline("lodopab", stages=["fbp_unet"])
    with pytest.raises(ValueError, match="sweep one stage at a time"):
        plan_pipeline("xray2ct", sweep=["optim.lr=1,2"])
    with pytest.raises(ValueError, match="unknown preset"):
        plan_pipeline("phases", preset="huge")


@pytest.mark.slow
def test_local_lodopab_chain_trains_the_unet_on_the_learned_window_and_on_hann(workdir: Path) -> None:
    main(["submit", "pipeline", "lodopab", "--executor", "local", "--stages", "fbp_window,fbp_unet", "--preset",
          "cpu-tiny", "--n-synth", "40", "--synth-pixels", "32", "--synth-angles", "24", "--prep-tasks", "2",
          "train.max_steps_per_epoch=2"])
    runs = workdir / "runs" / "lodopab"
    learned = json.loads((runs / "fbp_unet" / "learned_window" / "config.json").read_text())
    hann = json.loads((runs / "fbp_unet" / "hann" / "config.json").read_text())
    assert learned["model"]["window_checkpoint"] == str(runs / "fbp_window" / "checkpoints" / "best.pt")
    assert hann["model"]["window_checkpoint"] is None
    for run in ("fbp_unet/learned_window", "fbp_unet/hann"):
        ends = [json.loads(line) for line in (runs / run / "events.jsonl").read_text().splitlines()]
        assert [e["status"] for e in ends if e["event"] == "fit_end"] == ["completed"], run  # no segments
    summary = pd.read_csv(workdir / "results" / "lodopab" / "summary.csv")
    assert {"learned_window", "fbp_hann", "fbp_unet"} <= set(summary.model)
    assert {Path(r).name for r in summary.run} == {"fbp_window", "learned_window", "hann"}


@pytest.mark.slow
def test_local_xray2ct_pipeline_trains_compares_and_writes_an_example_nifti(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["submit", "pipeline", "xray2ct", "--executor", "local", "--preset", "cpu-tiny", "--n-synth", "8",
          "--synth-pixels", "32", "--prep-tasks", "2", "train.max_steps_per_epoch=2"])
    out = capsys.readouterr().out
    for step in ("prep_xray2ct: job", "stage1_64: job", "refine_256: job", "direct_256: job", "aggregate: job",
                 "infer: job"):
        assert step in out
    manifest = json.loads((workdir / "data" / "xray2ct" / "shards" / "manifest.json").read_text())
    assert manifest["shards"]
    runs = workdir / "runs" / "xray2ct"
    assert json.loads((runs / "refine_256" / "config.json").read_text())["stage1_checkpoint"] == str(
        runs / "stage1_64" / "checkpoints" / "best.pt")
    summary = pd.read_csv(workdir / "results" / "xray2ct" / "summary.csv")
    assert {"stage1_64", "stage1_64_trilinear", "refine_256", "direct_256"} <= set(summary.model)
    image = nib.load(workdir / "results" / "xray2ct" / "inference" / "example.nii.gz")
    assert image.shape == (32, 32, 32)  # refine_256's grid (volume_32 under cpu-tiny)
    submitted = json.loads((workdir / "results" / "xray2ct" / "pipeline.json").read_text())
    assert set(submitted["train"]) == {"stage1_64", "refine_256", "direct_256"} and submitted["infer"]


@pytest.mark.slow
def test_local_phases_pipeline_trains_and_infers_the_test_volumes(workdir: Path) -> None:
    main(["submit", "pipeline", "phases", "--executor", "local", "--preset", "cpu-tiny", "--n-synth", "6",
          "--prep-tasks", "2", "train.max_steps_per_epoch=2", "train.epochs=1"])
    run = workdir / "runs" / "phases" / "pix2pix_phase"
    assert (run / "eval" / "test").is_dir()
    assert (workdir / "results" / "phases" / "summary.csv").is_file()
    inference = workdir / "results" / "phases" / "inference"
    metrics = pd.read_csv(inference / "metrics.csv")
    assert len(list(inference.glob("*.nii.gz"))) == 2 and len(metrics) >= 2


def test_prep_arrays_are_split_below_max_array_size() -> None:
    from ctpipe.pipeline import max_array_size, split_array

    assert max_array_size("ClusterName = x\nMaxArraySize            = 16\nMaxJobCount = 10000\n") == 16
    assert max_array_size("ClusterName = x\n") is None
    assert split_array(range(20), 16) == [list(range(16)), [16, 17, 18, 19]]
    assert split_array(range(5), 16) == [list(range(5))]
    assert split_array(range(5), None) == [list(range(5))]
