"""``make demo-phases`` at a reduced size: every step runs and leaves the files the demo promises."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from ctpipe.demo_phases import PhasesDemoSize, run_phases_demo


@pytest.mark.slow
def test_phases_demo_pipeline_at_reduced_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = PhasesDemoSize(n_train=8, n_test=2, size=32, n_slices=4, epochs=2, ngf=8, max_steps_per_epoch=3)
    outputs = run_phases_demo(tmp_path, size)
    printed = capsys.readouterr().out
    results = tmp_path / "results" / "demo_phases"
    assert f"log: {results / 'demo.log'}" in printed and f"demo log: {results / 'demo.log'}" in printed
    assert "5/5 aggregating" in (results / "demo.log").read_text()
    assert "dB vs identity baseline" in printed
    predictions = sorted(outputs["predictions"].glob("*.nii.gz"))
    assert [p.name for p in predictions] == ["test_patient_0.nii.gz", "test_patient_1.nii.gz"]
    source = nib.load(str(tmp_path / "data" / "demo_phases" / "raw" / "testA" / "test_patient_0.nii.gz"))
    predicted = nib.load(str(predictions[0]))
    assert predicted.shape == source.shape and (predicted.affine == source.affine).all()
    metrics = pd.read_csv(outputs["inference_metrics"])
    assert len(metrics) == 2 and any(c.startswith("identity") for c in metrics.columns)
    summary = pd.read_csv(outputs["summary"])
    assert {"pix2pix", "identity"} <= set(summary.model) and set(summary.split) == {"validation", "test"}
    for path in outputs.values():
        assert Path(path).exists(), path
