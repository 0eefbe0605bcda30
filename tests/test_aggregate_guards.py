"""`ctpipe aggregate` checks every per-sample table against the number of samples its run scored."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from ctpipe.runner import run_stage

TINY = ["data.batch_size=8", "train.epochs=1", "train.early_stopping_patience=null", "train.device=cpu"]


def aggregate(runs, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", "aggregate", "--runs", str(runs), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)


def test_a_truncated_per_sample_table_is_named_and_nothing_is_averaged(tiny_lodopab, tmp_path):
    run = tmp_path / "runs" / "fbp_window" / "a"
    run_stage("fbp_window", run, [f"data.root={tiny_lodopab}", *TINY])
    table = run / "eval" / "test" / "fbp_hann.csv"
    full = pd.read_csv(table)
    assert len(full) > 3
    good = aggregate(tmp_path / "runs", tmp_path / "ok")
    assert good.returncode == 0, good.stderr[-2000:]
    full.head(3).to_csv(table, index=False)  # a truncated copy, say
    bad = aggregate(tmp_path / "runs", tmp_path / "bad")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert str(table) in bad.stderr and f"3 rows, but the run scored {len(full)} samples" in bad.stderr
    assert not (tmp_path / "bad" / "summary.csv").exists()
