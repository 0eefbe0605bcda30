"""``ctpipe aggregate`` over a runs folder holding runs of all three families (LoDoPaB, X-ray -> CT, pix2pix).

Their metric columns differ, so the combined summary has NaN holes: the command must still exit 0 and write a
table and a PSNR chart per family (it used to exit 2 with "Axis limits cannot be NaN or Inf" and no PNGs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctpipe.cli import main
from ctpipe.presets import preset_overrides
from ctpipe.runner import run_stage
from tests.threads import one_torch_thread

QUICK = ["train.epochs=1", "train.max_steps_per_epoch=2"]


@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctpipe.data import synthetic_phases as sp
    from ctpipe.data.lodopab import prep_lodopab
    from ctpipe.data.nifti_pairs import prep_nifti_pairs
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry
    from tests.stages.test_stage1_64 import make_xray_shards

    root = tmp_path_factory.mktemp("mixed")
    with one_torch_thread():
        write_synthetic_lodopab(root / "lodopab" / "raw", n=40, size="small", seed=5, samples_per_file=16,
                                geometry=ParallelBeamGeometry.lodopab().scaled(32, 24), progress=False)
        prep_lodopab(root / "lodopab" / "raw", root / "lodopab" / "shards", progress=False)
        xray = make_xray_shards(root / "xray2ct", n=6)
        sp.write_synthetic_phases(root / "phases" / "src", 6, size=64, n_slices=16)
        prep_nifti_pairs(root / "phases" / "src", root / "phases" / "shards", size=64,
                         split_fractions=(0.6, 0.2, 0.2))
        for stage, shards in (("fbp_window", root / "lodopab" / "shards"), ("stage1_64", xray),
                              ("pix2pix_phase", root / "phases" / "shards")):
            over = [*preset_overrides("cpu-tiny", stage), f"data.root={shards}", *QUICK]
            assert run_stage(stage, root / "runs" / stage / "default", over).status == "completed"
    return root / "runs"


def test_aggregate_of_three_families_writes_a_table_and_chart_per_family(mixed_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "summary"
    main(["aggregate", "--runs", str(mixed_runs), "--out", str(out)])  # exit 2 (SystemExit) before the fix
    combined = pd.read_csv(out / "summary.csv")
    assert set(combined.stage) == {"fbp_window", "stage1_64", "pix2pix_phase"}
    families = {"lodopab": "fbp_window", "xray2ct": "stage1_64", "phases": "pix2pix_phase"}
    for family, stage in families.items():
        table = pd.read_csv(out / f"summary_{family}.csv")
        assert set(table.stage) == {stage}
        metrics = [c for c in table.columns if c.startswith(("psnr", "ssim"))]
        assert metrics and table[metrics].notna().all().all(), f"{family}: a column it never fills was kept"
        assert (out / f"psnr_{family}.png").stat().st_size > 1000
    for stage in families.values():
        assert any(out.glob(f"{stage}-default-*.png"))


def test_plot_summary_skips_rows_without_the_metric(tmp_path: Path) -> None:
    from ctpipe.report import plot_summary

    summary = pd.DataFrame({"run": ["a", "b"], "model": ["m", "n"], "split": ["test", "test"],
                            "psnr": [np.nan, 31.0]})
    assert plot_summary(summary, tmp_path / "one.png", "psnr") == tmp_path / "one.png"
    assert plot_summary(summary.assign(psnr=np.nan), tmp_path / "none.png", "psnr") is None
    assert not (tmp_path / "none.png").exists()
