"""NIfTI pair prep: bad files are skipped and reported, orientation comes from the affine, the intensity
mapping round-trips, the prep is idempotent and splits never share a patient."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctpipe.data.datasets import ShardDataset
from ctpipe.data.nifti_pairs import find_pairs, from_canonical, prep_nifti_pairs, prep_settings, to_canonical
from ctpipe.data.shards import read_manifest, sha256_file
from ctpipe.data.synthetic_phases import write_synthetic_phases
from ctpipe.intensity import PIX2PIX_HU_WINDOW, hu_to_symmetric_unit, symmetric_unit_to_hu

SIZE, SLICES = 32, 4


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def report_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "prep_report.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def slices_of(out: Path, patient: str, field: str = "input") -> np.ndarray:
    manifest = read_manifest(out)
    split = manifest.split_of()[patient]
    ds = ShardDataset(out, split, [field])
    rows = [ds[i] for i in range(len(ds)) if ds[i]["patient_id"] == patient]
    return np.stack([r[field][0].numpy() for r in sorted(rows, key=lambda r: r["sample_id"])])


# ---- intensity -----------------------------------------------------------------------------------------
def test_intensity_mapping_round_trips_within_half_hu() -> None:
    hu = np.linspace(-1024, 3071, 100_001, dtype=np.float32)
    unit = hu_to_symmetric_unit(hu, PIX2PIX_HU_WINDOW)
    assert unit.min() == -1.0 and unit.max() == 1.0
    assert np.max(np.abs(symmetric_unit_to_hu(unit, PIX2PIX_HU_WINDOW) - hu)) < 0.5
    assert np.max(np.abs(symmetric_unit_to_hu(unit, PIX2PIX_HU_WINDOW) - hu)) < 1e-2  # float32 does far better
    t = torch.tensor([-3000.0, -1024.0, 1023.5, 3071.0, 5000.0])
    assert torch.allclose(hu_to_symmetric_unit(t, PIX2PIX_HU_WINDOW), torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]))
    assert symmetric_unit_to_hu(np.array([0.0]), (-1000.0, 1000.0))[0] == 0.0
    with pytest.raises(ValueError, match="hu_window"):
        hu_to_symmetric_unit(hu, (100.0, 100.0))


def test_canonical_round_trip_matches_nibabel() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 3], [0, 3.0, 0, -4], [0, 0, 0, 1]])  # permuted + flipped
    canon, canon_affine = to_canonical(data, affine)
    reference = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    assert np.array_equal(canon, reference.get_fdata(dtype=np.float32))
    assert np.allclose(canon_affine, reference.affine)
    assert nib.aff2axcodes(canon_affine) == ("R", "A", "S")
    assert np.array_equal(from_canonical(canon, affine), data)


# ---- the bad-file run ----------------------------------------------------------------------------------
@pytest.fixture()
def messy_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write_synthetic_phases(src, 3, size=SIZE, n_slices=SLICES)
    good_a = src / "trainA" / "patient_0.nii.gz"
    image = nib.load(str(good_a))
    # truncated input file (a gzip stream cut in half), with a valid target
    blob = good_a.read_bytes()
    (src / "trainA" / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    save(src / "trainB" / "truncated.nii.gz", image.get_fdata(dtype=np.float32), image.affine)
    # NaN-filled target
    save(src / "trainA" / "nanvol.nii.gz", image.get_fdata(dtype=np.float32), image.affine)
    save(src / "trainB" / "nanvol.nii.gz", np.full(image.shape, np.nan, np.float32), image.affine)
    # input without a target
    save(src / "trainA" / "lonely.nii.gz", image.get_fdata(dtype=np.float32), image.affine)
    # shape mismatch
    save(src / "trainA" / "shapes.nii.gz", np.zeros((SIZE, SIZE, SLICES), np.float32), image.affine)
    save(src / "trainB" / "shapes.nii.gz", np.zeros((SIZE, SIZE, SLICES + 1), np.float32), image.affine)
    return src


def test_bad_files_are_skipped_and_exactly_reported(messy_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = prep_nifti_pairs(messy_src, out, size=SIZE)
    assert result.manifest is not None and result.manifest.is_file()
    rows = report_rows(out)
    assert [r["status"] for r in rows] == ["skipped"] * 4  # the report lists the bad files, nothing else
    skipped = {r["file"]: r["reason"] for r in rows}
    assert set(skipped) == {"trainA/truncated.nii.gz", "trainB/nanvol.nii.gz", "trainA/lonely.nii.gz",
                            "trainA/shapes.nii.gz"}
    assert "unreadable or truncated" in skipped["trainA/truncated.nii.gz"]
    assert "non-finite" in skipped["trainB/nanvol.nii.gz"]
    assert "unmatched" in skipped["trainA/lonely.nii.gz"] and "trainB" in skipped["trainA/lonely.nii.gz"]
    assert "shape mismatch" in skipped["trainA/shapes.nii.gz"]
    assert dict(result.skipped) == skipped
    manifest = read_manifest(out)
    with open(out / "prep_volumes.csv", newline="") as handle:  # the used pairs, with their split
        used = list(csv.DictReader(handle))
    assert [(r["patient_id"], r["input"], r["target"], r["n_slices"], r["shard"]) for r in used] == [
        (f"patient_{k}", f"trainA/patient_{k}.nii.gz", f"trainB/patient_{k}.nii.gz", str(SLICES), f"shard-0000{k}.h5")
        for k in range(3)]
    assert {r["patient_id"]: r["split"] for r in used} == manifest.split_of()
    assert sorted(manifest.attrs["volumes"]) == ["patient_0", "patient_1", "patient_2"]
    assert manifest.n_samples == 3 * SLICES
    assert [s.file for s in manifest.shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert [manifest.attrs["volumes"][f"patient_{k}"]["shard"] for k in range(3)] == [s.file for s in manifest.shards]
    assert set(manifest.fields) == {"input", "target"}
    assert manifest.fields["input"].shape == (SIZE, SIZE) and manifest.fields["input"].dtype == "float32"
    assert prep_settings(manifest.attrs) == (PIX2PIX_HU_WINDOW, SIZE)
    # no temporary files left behind
    assert not [p for p in out.rglob(".*") if p.is_file()]


def test_affine_mismatch_and_4d_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_synthetic_phases(src, 1, size=SIZE, n_slices=SLICES)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    save(src / "trainA" / "moved.nii.gz", np.zeros((SIZE, SIZE, SLICES), np.float32), affine)
    shifted = affine.copy()
    shifted[0, 3] = 0.5
    save(src / "trainB" / "moved.nii.gz", np.zeros((SIZE, SIZE, SLICES), np.float32), shifted)
    save(src / "trainA" / "fourd.nii.gz", np.zeros((SIZE, SIZE, SLICES, 2), np.float32), affine)
    save(src / "trainB" / "fourd.nii.gz", np.zeros((SIZE, SIZE, SLICES, 2), np.float32), affine)
    prep_nifti_pairs(src, tmp_path / "out", size=SIZE)
    skipped = {r["file"]: r["reason"] for r in report_rows(tmp_path / "out") if r["status"] == "skipped"}
    assert "affine mismatch" in skipped["trainA/moved.nii.gz"]
    assert "3D" in skipped["trainA/fourd.nii.gz"]
    assert len(skipped) == 2


# ---- geometry ---------------------------------------------------------------------------------------------
def ramp_volume() -> np.ndarray:
    """HU encoding the voxel's (i, j, k): distinct, in the window."""
    i, j, k = np.meshgrid(np.arange(SIZE), np.arange(SIZE), np.arange(SLICES), indexing="ij")
    return (i * 10 + j * 0.5 + k * 300 - 800).astype(np.float32)


def test_flipped_affine_gives_the_same_anatomical_slices(tmp_path: Path) -> None:
    data = ramp_volume()
    spacing = np.array([0.8, 0.8, 2.5])
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = [-10.0, -20.0, 30.0]
    # the same anatomy stored with the z axis reversed (negative z spacing) and x, y flipped (LPS):
    n = np.array(data.shape) - 1
    flipped = np.diag([-spacing[0], -spacing[1], -spacing[2], 1.0])
    flipped[:3, 3] = ras[:3, 3] + spacing * n  # world position of the last voxel becomes the first
    data_flipped = data[::-1, ::-1, ::-1].copy()
    for name, volume, affine in (("plain", data, ras), ("flipped", data_flipped, flipped)):
        src = tmp_path / name
        save(src / "trainA" / "p.nii.gz", volume, affine)
        save(src / "trainB" / "p.nii.gz", volume + 5, affine)
        prep_nifti_pairs(src, tmp_path / f"out_{name}", size=None)
    plain, flip = slices_of(tmp_path / "out_plain", "p"), slices_of(tmp_path / "out_flipped", "p")
    assert plain.shape == (SLICES, SIZE, SIZE)
    assert np.array_equal(plain, flip)
    assert np.array_equal(slices_of(tmp_path / "out_plain", "p", "target"),
                          slices_of(tmp_path / "out_flipped", "p", "target"))
    # slice k is the k-th inferior-to-superior plane of the RAS volume, axis 0 towards R
    assert np.allclose(symmetric_unit_to_hu(plain, PIX2PIX_HU_WINDOW), np.moveaxis(data, 2, 0), atol=0.05)
    vols = read_manifest(tmp_path / "out_flipped").attrs["volumes"]["p"]
    assert vols["axcodes"] == "LPI" and np.allclose(vols["affine"], flipped)
    assert np.allclose(vols["canonical_affine"], ras)


def test_resize_is_recorded_and_values_stay_in_range(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_synthetic_phases(src, 1, size=SIZE, n_slices=SLICES)
    prep_nifti_pairs(src, tmp_path / "out", size=16)
    manifest = read_manifest(tmp_path / "out")
    assert manifest.fields["target"].shape == (16, 16)
    assert manifest.attrs["resize"]["size"] == 16
    assert manifest.attrs["volumes"]["patient_0"]["resized_from"] == [SIZE, SIZE]
    x = slices_of(tmp_path / "out", "patient_0")
    assert x.shape == (SLICES, 16, 16) and x.min() >= -1.0 and x.max() <= 1.0


# ---- idempotence, array tasks, splits ---------------------------------------------------------------------
def test_prep_is_idempotent_and_rewrites_only_changed_volumes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_synthetic_phases(src, 3, size=SIZE, n_slices=SLICES)
    out = tmp_path / "out"
    first = prep_nifti_pairs(src, out, size=SIZE)
    shards = sorted(out.glob("shard-*.h5"))
    before = {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in shards}
    manifest_bytes = (out / "manifest.json").read_bytes()
    second = prep_nifti_pairs(src, out, size=SIZE)
    assert first.written == second.reused == tuple(f"volumes/{p.name}" for p in shards) and second.written == ()
    assert {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in shards} == before
    assert (out / "manifest.json").read_bytes() == manifest_bytes
    # a changed source volume is re-prepared, the others are reused
    changed = src / "trainB" / "patient_1.nii.gz"
    image = nib.load(str(changed))
    save(changed, image.get_fdata(dtype=np.float32) + 1.0, image.affine)
    os.utime(changed, ns=(before["shard-00001.h5"][1] + 10**9,) * 2)
    third = prep_nifti_pairs(src, out, size=SIZE)
    assert third.written == ("volumes/shard-00001.h5",) and len(third.reused) == 2
    manifest = read_manifest(out)
    assert sha256_file(out / "shard-00001.h5") != before["shard-00001.h5"][0]
    assert [sha256_file(out / s.file) for s in manifest.shards] == [s.sha256 for s in manifest.shards]
    assert sha256_file(out / "shard-00000.h5") == before["shard-00000.h5"][0]


def test_array_tasks_give_the_single_task_result(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_synthetic_phases(src, 4, size=SIZE, n_slices=SLICES)
    single = prep_nifti_pairs(src, tmp_path / "single", size=SIZE)
    t1 = prep_nifti_pairs(src, tmp_path / "multi", size=SIZE, task_index=1, n_tasks=2)
    assert t1.manifest is None and t1.written == ("volumes/shard-00001.h5", "volumes/shard-00003.h5")
    t0 = prep_nifti_pairs(src, tmp_path / "multi", size=SIZE, task_index=0, n_tasks=2)
    assert t0.manifest is not None and t0.written == ("volumes/shard-00000.h5", "volumes/shard-00002.h5")
    a, b = read_manifest(tmp_path / "single"), read_manifest(tmp_path / "multi")
    assert a.splits == b.splits and a.attrs == b.attrs
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert single.manifest is not None
    with pytest.raises(ValueError, match="task_index"):
        prep_nifti_pairs(src, tmp_path / "x", task_index=2, n_tasks=2)


def test_no_patient_in_two_splits_and_test_folders_go_to_test(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_synthetic_phases(src, 10, size=16, n_slices=2)
    other = write_synthetic_phases(tmp_path / "other", 2, size=16, n_slices=2, seed=1)  # patient_0, patient_1
    for a, b in other:  # test-folder files named like training patients: they must be skipped, not leak
        for path, folder in ((a, "testA"), (b, "testB")):
            (src / folder).mkdir(exist_ok=True)
            shutil.copy(path, src / folder / path.name)
    image = nib.load(str(src / "testA" / "patient_0.nii.gz"))
    for folder in ("testA", "testB"):
        save(src / folder / "held_out.nii.gz", image.get_fdata(dtype=np.float32), image.affine)
    prep_nifti_pairs(src, tmp_path / "out", size=16)
    manifest = read_manifest(tmp_path / "out")
    seen: dict[str, str] = {}
    for split, patients in manifest.splits.items():
        for p in patients:
            assert p not in seen, f"{p} in {seen.get(p)} and {split}"
            seen[p] = split
    assert set(seen) == {f"patient_{k}" for k in range(10)} | {"held_out"}
    assert manifest.splits["test"] == ("held_out",)
    assert manifest.splits["train"] and manifest.splits["validation"]
    skipped = {r["file"]: r["reason"] for r in report_rows(tmp_path / "out") if r["status"] == "skipped"}
    assert set(skipped) == {"testA/patient_0.nii.gz", "testA/patient_1.nii.gz"}
    assert all("leak" in reason for reason in skipped.values())


def test_find_pairs_and_empty_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trainA"):
        find_pairs(tmp_path)
    write_synthetic_phases(tmp_path, 2, size=16, n_slices=2)
    (tmp_path / "trainA" / "notes.txt").write_text("not an image")
    pairs = find_pairs(tmp_path)
    assert [(p.patient_id, p.subset) for p in pairs] == [("patient_0", "train"), ("patient_1", "train")]


def test_all_bad_raises_after_writing_the_report(tmp_path: Path) -> None:
    save(tmp_path / "src" / "trainA" / "x.nii.gz", np.zeros((4, 4, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="prep_report.csv"):
        prep_nifti_pairs(tmp_path / "src", tmp_path / "out", size=16)
    assert [r["status"] for r in report_rows(tmp_path / "out")] == ["skipped"]
    assert json.loads((tmp_path / "out" / "prep_tasks" / "task-00000-of-00001.json").read_text())["rows"]


def test_a_volume_that_turns_bad_leaves_no_stale_shard(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    write_synthetic_phases(src, 3, size=16, n_slices=2)
    prep_nifti_pairs(src, out, size=16)
    bad = src / "trainA" / "patient_1.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    result = prep_nifti_pairs(src, out, size=16)
    assert result.skipped == (("trainA/patient_1.nii.gz", result.skipped[0][1]),)
    manifest = read_manifest(out)
    assert [s.file for s in manifest.shards] == ["shard-00000.h5", "shard-00001.h5"]
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.h5", "shard-00000.json",
                                                          "shard-00001.h5", "shard-00001.json"]
    assert sorted(p.name for p in (out / "volumes").glob("*.h5")) == ["shard-00000.h5", "shard-00002.h5"]
    assert sorted(manifest.attrs["volumes"]) == ["patient_0", "patient_2"]
    assert slices_of(out, "patient_2").shape == (2, 16, 16)


def test_a_gzip_missing_only_its_trailer_is_skipped_as_truncated(tmp_path: Path) -> None:
    """The voxels are complete but the gzip CRC/length trailer is gone (an interrupted copy): skipped, not used."""
    src = tmp_path / "src"
    write_synthetic_phases(src, 2, size=16, n_slices=2)
    cut = src / "trainB" / "patient_1.nii.gz"
    cut.write_bytes(cut.read_bytes()[:-4])
    result = prep_nifti_pairs(src, tmp_path / "out", size=16)
    assert [r["file"] for r in report_rows(tmp_path / "out")] == ["trainB/patient_1.nii.gz"]
    assert "truncated" in result.skipped[0][1]
    assert sorted(read_manifest(tmp_path / "out").attrs["volumes"]) == ["patient_0"]


def test_two_files_of_one_name_in_a_folder_use_the_first_and_report_the_other(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_synthetic_phases(src, 2, size=16, n_slices=2)
    image = nib.load(str(src / "trainA" / "patient_1.nii.gz"))
    save(src / "trainA" / "patient_1.nii", np.zeros(image.shape, np.float32), image.affine)  # a stale copy
    result = prep_nifti_pairs(src, tmp_path / "out", size=16)
    rows = report_rows(tmp_path / "out")
    assert [r["file"] for r in rows] == ["trainA/patient_1.nii"]
    assert "duplicate" in rows[0]["reason"] and "trainA/patient_1.nii.gz" in rows[0]["reason"]
    volumes = read_manifest(tmp_path / "out").attrs["volumes"]
    assert sorted(volumes) == ["patient_0", "patient_1"] and volumes["patient_1"]["input"] == "trainA/patient_1.nii.gz"
    assert result.n_volumes == 2
    assert slices_of(tmp_path / "out", "patient_1").min() > -1.0  # the real volume, not the zeros (-> 0 HU)
