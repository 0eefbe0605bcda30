"""What prep / infer commands print last: a short human summary, or one JSON object with --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctpipe.cli import main
from ctpipe.data.shards import read_manifest


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    main(argv)
    return capsys.readouterr().out


def test_synth_test_patients_are_accepted_by_prep_with_a_summary(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    raw, shards = tmp_path / "raw", tmp_path / "shards"
    common = ["--size", "16", "--n-slices", "2", "--oversample", "1"]
    out = _run(["prep", "synth-phases", "--out", str(raw), "--n", "4", *common], capsys)
    assert out.startswith("prep synth-phases: wrote 8 files under") and "next: ctpipe prep nifti-pairs" in out
    payload = json.loads(_run(["prep", "synth-phases", "--out", str(raw), "--n", "2", "--subset", "test", *common,
                               "--json"], capsys))
    assert payload["written"] == 4 and all("test_patient_" in f for f in payload["files"])
    out = _run(["prep", "nifti-pairs", "--src", str(raw), "--out", str(shards), "--size", "16"], capsys)
    lines = out.strip().splitlines()
    assert lines[0] == f"prep nifti-pairs: 6 volumes written, 0 kept from an earlier run, 0 input files skipped -> {shards}"
    assert lines[1:] == [f"manifest: {shards / 'manifest.json'}", f"report: {shards / 'prep_report.csv'}"]
    assert "PrepResult(" not in out
    assert read_manifest(shards).splits["test"] == ("test_patient_0", "test_patient_1")
    again = json.loads(_run(["prep", "nifti-pairs", "--src", str(raw), "--out", str(shards), "--size", "16",
                             "--json"], capsys))
    assert (again["written"], again["kept"], again["skipped"]) == (0, 6, [])
    assert again["manifest"] == str(shards / "manifest.json")


def test_lodopab_prep_summary_replaces_the_dataclass_repr(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ctpipe.data import synthetic
    from ctpipe.ops.geometry import ParallelBeamGeometry

    tiny = ParallelBeamGeometry.lodopab().scaled(32, 20)
    monkeypatch.setitem(synthetic.SIZES, "small", tiny)  # the command's "small" size, made tinier for the test
    raw, shards = tmp_path / "raw", tmp_path / "shards"
    out = _run(["prep", "synth-lodopab", "--out", str(raw), "--n", "10"], capsys)
    assert out.startswith("prep synth-lodopab: wrote 10 slices (train 8, validation 1, test 1)")
    out = _run(["prep", "lodopab", "--src", str(raw), "--out", str(shards)], capsys)
    assert "PrepResult(" not in out
    assert out.splitlines()[0] == f"prep lodopab: 3 shards written, 0 kept from an earlier run, 0 input files " \
                                  f"skipped -> {shards}"
    assert out.splitlines()[1] == f"manifest: {shards / 'manifest.json'}"
    payload = json.loads(_run(["prep", "lodopab", "--src", str(raw), "--out", str(shards), "--json"], capsys))
    assert (payload["written"], payload["kept"]) == (0, 3)
