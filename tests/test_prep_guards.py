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


def test_nifti_pairs_reports_every_file_it_does_not_use_and_cleans_a_killed_tasks_temporaries(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    assert ctpipe("prep", "synth-phases", "--out", str(src), "--n", "3", "--size", "16", "--n-slices", "2",
                  "--oversample", "1").returncode == 0
    (src / "trainA" / "notes.txt").write_text("not an image")
    (src / "trainA" / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    (src / "trainB" / "old").mkdir()
    (src / "trainB" / "patient_9.nii.gz").symlink_to(src / "trainB" / "patient_0.nii.gz")  # a link is used
    (src / "trainA" / "patient_9.nii.gz").symlink_to(src / "trainA" / "patient_0.nii.gz")
    result = ctpipe("prep", "nifti-pairs", "--src", str(src), "--out", str(out), "--size", "16")
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = report(out / "prep_report.csv")
    assert set(skipped) == {"notes.txt", "gone.nii.gz", "old"}, skipped
    assert "broken symbolic link" in skipped["gone.nii.gz"] and "folder" in skipped["old"]
    assert "skipped trainA/gone.nii.gz" in result.stdout
    assert "4 volumes" in result.stdout  # patient_9 (symbolic links to real files) is used
    # what a task killed mid-write leaves: temporary files of a volume shard, its task record, the manifest
    planted = [out / "volumes" / ".shard-00001.h5.k1ll3d.tmp", out / "prep_tasks" / ".task-00000-of-00001.json.x9.tmp",
               out / ".manifest.json.abc.tmp", out / ".shard-00002.h5.q.tmp"]
    for path in planted:
        path.write_bytes(b"half written")
    again = ctpipe("prep", "nifti-pairs", "--src", str(src), "--out", str(out), "--size", "16")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not [p for p in out.rglob("*.tmp")]
    bad = ctpipe("prep", "nifti-pairs", "--src", str(src), "--out", str(tmp_path / "o2"), "--split-fractions",
                 "0.5,0.2")
    assert bad.returncode == 2 and "--split-fractions 0.5,0.2" in bad.stderr and "sum to 1" in bad.stderr
    assert not (tmp_path / "o2").exists()  # refused before any volume was read



def test_the_same_prep_task_started_twice_at_once_is_refused_cleanly(tmp_path):
    import os
    import signal
    import time

    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    write_synthetic_lodopab(tmp_path / "raw", n=32, size="small", seed=1, samples_per_file=8,
                            geometry=ParallelBeamGeometry.lodopab().scaled(16, 12), progress=False)
    args = ["prep", "lodopab", "--src", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--task-index", "0",
            "--n-tasks", "1"]
    lock = tmp_path / ".out.prep-task-00000-of-00001.lock"
    first = subprocess.Popen([sys.executable, "-m", "ctpipe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        start = time.monotonic()
        while f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else ""):  # taken and signed
            assert first.poll() is None and time.monotonic() - start < 120, first.communicate()
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # the first run holds its task, mid-work
        second = ctpipe(*args)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
        assert f"prep task 0 of 1 for {tmp_path / 'out'} is in use by pid {first.pid}" in second.stderr
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.communicate()
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert (tmp_path / "out" / "manifest.json").is_file() and not lock.exists()
    assert ctpipe(*args).returncode == 0  # a later run of the same task is fine


def test_a_concurrent_tasks_claim_in_progress_is_not_another_data_set(tmp_path: Path) -> None:
    """Two array tasks start at once: one finds the other's claim (or its temporary file) in --out."""
    import pytest

    from ctpipe.data.shards import PREP_IDENTITY, ShardSetError, claim_output

    out = tmp_path / "shards"
    out.mkdir()
    (out / f".{PREP_IDENTITY}.claim-4242").write_text("{}")  # the other task's claim, being linked
    (out / f"..{PREP_IDENTITY}.claim-4243.x1y2z3.tmp").write_text("{")  # another one's, still being written
    claim_output(out, "lodopab", tmp_path / "raw", {"parts": ["train"]})
    assert (out / PREP_IDENTITY).is_file()
    other = tmp_path / "other"  # a file of anything else is still refused
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ShardSetError, match="not written by this prep"):
        claim_output(other, "lodopab", tmp_path / "raw", {"parts": ["train"]})
