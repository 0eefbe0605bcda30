"""The X-ray -> CT demo pipeline at a reduced size (tiny cohort, 16^3 volumes, one epoch per model), so that
`make demo-xray2ct` cannot rot: synthesis -> prep with a test split -> ViT + lift -> baselines -> summary + PNGs."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from ctpipe.demo_xray2ct import MARGIN, PSNR, DemoSettings, run_demo, verdict
from ctpipe.models.xray2ct import XRAY2CT_TINY


def test_demo_pipeline_at_reduced_size(tmp_path: Path) -> None:
    vit = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(XRAY2CT_TINY).items()}
    settings = DemoSettings(n=16, ct_size=32, xray_size=32, volume_size=16, vit_epochs=1, lift_epochs=1,
                            lift_preset="tiny", vit_network=json.dumps(vit))
    outputs = run_demo(tmp_path, settings)
    summary = pd.read_csv(outputs["summary"])
    for split in ("validation", "test"):
        rows = summary[summary.split == split]
        assert set(rows.experiment) == {"stage1_vit_cpu", "stage1_lift_cpu", "baseline"}
        assert {"mean_volume", "nearest_xray", "stage1_64"} <= set(rows.model)
        assert rows[PSNR].notna().all() and rows[MARGIN].notna().all()
        assert rows["psnr[x2ct:0-2500,max=4095]"].notna().all() and rows["ssim2d[x2ct:3-axis mean]"].notna().all()
        assert (rows.eval_size == 16).all()
    margin, model, baseline = verdict(outputs["summary"])
    test = summary[summary.split == "test"]
    assert baseline in ("mean_volume", "nearest_xray") and model in ("stage1_vit_cpu", "stage1_lift_cpu")
    assert margin == pytest.approx(test[test.experiment == model][MARGIN].max(), abs=1e-3)
    for name in ("slices_test", "slices_validation"):
        assert outputs[name].is_file() and outputs[name].stat().st_size > 10_000


def test_another_cohort_in_the_same_workdir_gets_its_own_data_and_runs(tmp_path: Path) -> None:
    """Re-running the demo with another cohort (here another seed) must not resume the first cohort's runs
    (that is refused: other data) nor reuse its CT volumes."""
    from ctpipe.demo_xray2ct import cohort_name, make_shards

    first = DemoSettings(n=4, seed=0, ct_size=32, xray_size=32, volume_size=16)
    second = dataclasses.replace(first, seed=1)
    assert cohort_name(first) != cohort_name(second)
    shards = [make_shards(tmp_path, s) for s in (first, second)]
    assert shards[0] != shards[1]
    volumes = [sorted((s.parent / "ct").glob("ct_*.nii.gz")) for s in shards]
    assert len(volumes[0]) == len(volumes[1]) == 4
    assert volumes[0][0].read_bytes() != volumes[1][0].read_bytes()  # seed 1 is really another cohort
