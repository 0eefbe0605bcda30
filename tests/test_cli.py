"""The ``ctpipe`` command end to end on a tiny LoDoPaB-format set: train, resume, aggregate, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def ctpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_train_resume_aggregate(tiny_lodopab, tmp_path):
    run = tmp_path / "runs" / "fbp_window" / "a"
    common = [f"data.root={tiny_lodopab}", "data.batch_size=4", "train.early_stopping_patience=null"]
    first = ctpipe("train", "fbp_window", "--run-dir", str(run), *common, "train.epochs=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])["status"] == "completed"
    # a second call with more epochs resumes from latest.pt instead of starting again
    second = ctpipe("train", "fbp_window", "--run-dir", str(run), *common, "train.epochs=3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert '"event": "resumed"' in (run / "events.jsonl").read_text()
    out = tmp_path / "results" / "t"
    agg = ctpipe("aggregate", "--runs", str(tmp_path / "runs"), "--out", str(out), cwd=tmp_path)
    assert agg.returncode == 0, agg.stderr
    summary = pd.read_csv(out / "summary.csv")
    test = summary[summary.split == "test"].set_index("model")
    assert set(test.index) == {"fbp_hann", "learned_window"}
    assert test.loc["fbp_hann", "experiment"] == "baseline"
    assert test.loc["learned_window", "epochs"] == 3
    for column in ("psnr[range=1]", "psnr[range=per_image]", "ssim[range=1]"):
        assert column in summary.columns
    assert test.loc["learned_window", "psnr[range=1]"] >= test.loc["fbp_hann", "psnr[range=1]"]
    per_sample = pd.read_csv(out / "per_sample.csv")
    assert len(per_sample[(per_sample.split == "test") & (per_sample.model == "fbp_hann")]) == \
        test.loc["fbp_hann", "n_samples"]
    assert (out / "psnr.png").stat().st_size > 1000
    assert any(p.suffix == ".png" and "test" in p.name for p in out.iterdir())


def test_unknown_config_key_is_a_clear_error(tiny_lodopab, tmp_path):
    result = ctpipe("train", "fbp_window", "--run-dir", str(tmp_path / "r"), "optim.lrr=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key(s) ['lrr']" in result.stderr and "weight_decay" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_raw_data_names_the_folder(tmp_path):
    result = ctpipe("prep", "lodopab", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 2 and "nowhere" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_truncated_raw_file_names_the_file(tmp_path):
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    raw = tmp_path / "raw"
    write_synthetic_lodopab(raw, n=24, size="small", seed=1, samples_per_file=8,
                            geometry=ParallelBeamGeometry.lodopab().scaled(16, 12), progress=False)
    victim = sorted(raw.glob("ground_truth_train_*.hdf5"))[0]
    victim.write_bytes(victim.read_bytes()[:500])
    result = ctpipe("prep", "lodopab", "--src", str(raw), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert victim.name in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "o").glob("*.h5")) and not (tmp_path / "o" / "manifest.json").exists()
