"""``make gpu-check`` without a GPU: the CPU dry run goes through every path of the GPU acceptance run, so the
script cannot rot between the rare runs on a lent GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_runs_every_path(tmp_path):
    out = tmp_path / "gpu_check.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("no CUDA device: CPU dry run")
    rows = pd.read_csv(out)
    assert set(rows.status) == {"ok"}
    assert set(rows.check) == {"cuda_tests", "one_rank_group", "two_rank_stage1", "amp_step", "fbp"}
    steps = rows[rows.check == "amp_step"]
    stages = {v.split()[0] for v in steps.variant}
    assert stages == {"stage1_64", "refine_256", "direct_256", "pix2pix_unet_512", "fbp_unet"}
    assert len(steps) == 10 and (steps.samples_per_s > 0).all()
    assert (steps[steps.variant.str.startswith(("stage1", "refine", "direct"))].estimate_gib > 0).all()
    assert "cpu:gloo,cuda:cudaonly" in rows[rows.check == "one_rank_group"].note.iloc[0]
    assert (out.with_suffix(".log")).stat().st_size > 0
    assert proc.stdout.rstrip().splitlines()[-1].startswith("fbp")  # the table is printed last
