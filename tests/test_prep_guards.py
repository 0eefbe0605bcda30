"""What the preps refuse or skip, through the `ctpipe prep` command in real processes: implausible value
ranges (LoDoPaB ground truth outside [0, 1]; a CT normalised to 0..1 instead of HU)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np


def ctpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", *args], capture_output=True, text=True, timeout=600)


def report(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {Path(r.get("file") or r.get("path")).name: r["reason"] for r in rows if r["status"] == "skipped"}


def normalise(path: Path, out: Path) -> None:
    image = nib.load(str(path))
    hu = image.get_fdata(dtype=np.float32)
    nib.save(nib.Nifti1Image((hu - hu.min()) / (hu.max() - hu.min()), image.affine), str(out))


def test_lodopab_ground_truth_outside_0_1_is_refused_naming_the_file(tmp_path):
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    raw = tmp_path / "raw"
    write_synthetic_lodopab(raw, n=24, size="small", seed=1, samples_per_file=8,
                            geometry=ParallelBeamGeometry.lodopab().scaled(16, 12), progress=False)
    victim = sorted(raw.glob("ground_truth_validation_*.hdf5"))[0]
    with h5py.File(victim, "r+") as handle:  # HU-like values instead of mu/mu_max
        handle["data"][...] = handle["data"][...] * 3000.0 - 1000.0
    result = ctpipe("prep", "lodopab", "--src", str(raw), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert victim.name in result.stderr and "[0, 1]" in result.stderr and "spans [-" in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_nifti_pairs_skips_and_reports_a_ct_that_is_not_in_hu(tmp_path):
    src = tmp_path / "src"
    assert ctpipe("prep", "synth-phases", "--out", str(src), "--n", "3", "--size", "16", "--n-slices", "4",
                  "--oversample", "1").returncode == 0
    normalise(src / "trainB" / "patient_1.nii.gz", src / "trainB" / "patient_1.nii.gz")
    result = ctpipe("prep", "nifti-pairs", "--src", str(src), "--out", str(tmp_path / "out"), "--size", "16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped trainB/patient_1.nii.gz" in result.stdout and "not HU" in result.stdout
    skipped = report(tmp_path / "out" / "prep_report.csv")
    assert list(skipped) == ["patient_1.nii.gz"] and "values span [0, 1]" in skipped["patient_1.nii.gz"]


def test_drr_prep_skips_and_reports_a_ct_that_is_not_in_hu(tmp_path):
    src = tmp_path / "ct"
    assert ctpipe("prep", "synth-ct", "--out", str(src), "--n", "3", "--size", "16", "--spacing-mm", "20").returncode == 0
    first = sorted(src.glob("*.nii*"))[0]
    normalise(first, src / "normalised.nii.gz")
    result = ctpipe("prep", "drr", "--src", str(src), "--out", str(tmp_path / "out"), "--xray-size", "16",
                    "--volume-sizes", "8,16")
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = report(tmp_path / "out" / "prep_report.csv")
    assert list(skipped) == ["normalised.nii.gz"] and "not HU" in skipped["normalised.nii.gz"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prep_refuses_an_out_folder_holding_another_data_set(tmp_path):
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    for seed, name in ((1, "raw"), (2, "raw2")):
        write_synthetic_lodopab(tmp_path / name, n=16, size="small", seed=seed, samples_per_file=8,
                                geometry=ParallelBeamGeometry.lodopab().scaled(16, 12), progress=False)
    out = tmp_path / "set"
    assert ctpipe("prep", "lodopab", "--src", str(tmp_path / "raw"), "--out", str(out)).returncode == 0
    before = _snapshot(out)
    assert ctpipe("prep", "synth-phases", "--out", str(tmp_path / "phases"), "--n", "2", "--size", "16",
                  "--n-slices", "2", "--oversample", "1").returncode == 0
    assert ctpipe("prep", "synth-ct", "--out", str(tmp_path / "ct"), "--n", "2", "--size", "16").returncode == 0
    attempts = {
        "nifti-pairs": ["prep", "nifti-pairs", "--src", str(tmp_path / "phases"), "--out", str(out), "--size", "16"],
        "drr": ["prep", "drr", "--src", str(tmp_path / "ct"), "--out", str(out), "--xray-size", "16",
                "--volume-sizes", "8"],
        "other source": ["prep", "lodopab", "--src", str(tmp_path / "raw2"), "--out", str(out)],
        "other settings": ["prep", "lodopab", "--src", str(tmp_path / "raw"), "--out", str(out), "--parts", "train"],
    }
    for case, args in attempts.items():
        result = ctpipe(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (case, result.stderr[-2000:])
        assert str(out) in result.stderr and "another --out" in result.stderr, (case, result.stderr)
        assert _snapshot(out) == before, case
    again = ctpipe("prep", "lodopab", "--src", str(tmp_path / "raw"), "--out", str(out))  # same prep: resumes
    assert again.returncode == 0, again.stderr[-2000:]
    assert _snapshot(out) == before
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    result = ctpipe("prep", "lodopab", "--src", str(tmp_path / "raw"), "--out", str(mine))
    assert result.returncode == 2 and "thesis.tex" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
