"""ctpipe.pipeline without SLURM: planning, the `ctpipe submit pipeline` command line (next to `submit <stage>`),
and the whole chain on the submitit local executor (the same command a cluster runs, steps in order).

The SLURM side (afterok dependencies, arrays, sacct states) is tested in tests/slurm/test_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ctpipe.cli import _parse, _submit, _submit_pipeline, main
from ctpipe.pipeline import FAMILIES, SynthSpec, plan_pipeline


def test_submit_pipeline_and_submit_stage_parse_side_by_side() -> None:
    stage = _parse(["submit", "fbp_window", "optim.lr=1e-3", "--executor", "debug", "train.epochs=2"])
    assert (stage.func, stage.stage, stage.overrides, stage.executor) == (
        _submit, "fbp_window", ["optim.lr=1e-3", "train.epochs=2"], "debug")
    chain = _parse(["submit", "pipeline", "lodopab", "train.epochs=2", "--executor", "slurm", "--src", "raw",
                    "optim.lr=1e-3", "--array", "optim.lr=1,2"])
    assert chain.func is _submit_pipeline and chain.command == "submit"
    assert (chain.family, chain.src, chain.executor, chain.array) == ("lodopab", "raw", "slurm", ["optim.lr=1,2"])
    assert chain.overrides == ["train.epochs=2", "optim.lr=1e-3"]  # overrides before and after options


def test_unknown_family_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(["submit", "pipeline", "lidc"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'lidc'" in capsys.readouterr().err


def test_plan_resolves_folders_and_refuses_foreign_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("CTPIPE_DATA", "CTPIPE_RUNS", "CTPIPE_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    plan = plan_pipeline("lodopab", name="exp", overrides=["train.epochs=1"], sweep=["optim.lr=1,2"])
    assert plan.stages == FAMILIES["lodopab"].default_stages == ("fbp_window",)
    assert (plan.raw, plan.shards) == (tmp_path / "data" / "exp" / "raw", tmp_path / "data" / "exp" / "shards")
    assert (plan.runs, plan.results) == (tmp_path / "runs" / "exp", tmp_path / "results" / "exp")
    assert plan.synth == SynthSpec()  # no --src: synthesize first
    given = plan_pipeline("lodopab", src="real/lodopab")
    assert given.synth is None and given.raw == tmp_path / "real" / "lodopab" and given.name == "lodopab"
    with pytest.raises(ValueError, match="not a stage of the lodopab family"):
        plan_pipeline("lodopab", stages=["pix2pix_phase"])
    with pytest.raises(ValueError, match="--prep-tasks"):
        plan_pipeline("lodopab", prep_tasks=0)


@pytest.mark.slow
def test_local_pipeline_synthesizes_preps_trains_and_aggregates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("CTPIPE_DATA", "CTPIPE_RUNS", "CTPIPE_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    main(["submit", "pipeline", "lodopab", "--executor", "local", "--n-synth", "40", "--synth-pixels", "32",
          "--synth-angles", "24", "--prep-tasks", "2", "train.epochs=2", "train.device=cpu"])
    out = capsys.readouterr().out
    assert "prep_lodopab: job" in out and "fbp_window: job" in out and "aggregate: job" in out
    assert "  | " in out and "[ctpipe.train]" in out  # the local jobs' log lines are forwarded while waiting
    manifest = json.loads((tmp_path / "data" / "lodopab" / "shards" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4  # 32/4/4 slices, 16 per raw file: 2 + 1 + 1 pairs, by 2 prep tasks
    history = pd.read_csv(tmp_path / "runs" / "lodopab" / "fbp_window" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    summary = pd.read_csv(tmp_path / "results" / "lodopab" / "summary.csv")
    assert sorted(zip(summary["model"], summary["split"])) == [
        ("fbp_hann", "test"), ("fbp_hann", "validation"), ("learned_window", "test"), ("learned_window", "validation")]
    submitted = json.loads((tmp_path / "results" / "lodopab" / "pipeline.json").read_text())
    assert submitted["executor"] == "local" and len(submitted["prep"]) == 2 and submitted["aggregate"]
    assert submitted["plan"]["shards"] == str(tmp_path / "data" / "lodopab" / "shards")
