import csv
import hashlib

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from ctpipe.cli import main as cli_main
from ctpipe.data.datasets import ShardDataset
from ctpipe.data.drr_prep import (
    parse_split_fractions,
    CTVolume,
    DRRPrepConfig,
    ct_to_sample,
    load_ct,
    patient_id_of,
    prep_drr,
    resample_to_cube,
)
from ctpipe.data.shards import ShardSetError, patient_split, read_manifest
from ctpipe.data.synthetic_ct import save_nifti, synthetic_ct_volume, write_synthetic_ct
from ctpipe.intensity import XRAY2CT_HU_WINDOW, hu_to_unit_interval

XRAY, SIZES = 32, (16, 32)


def write_bad_inputs(folder):
    """One file per kind of bad input; returns {file name: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file")
    save_nifti(folder / "flat2d.nii.gz", np.zeros((16, 16), dtype=np.float32), np.eye(4))
    save_nifti(folder / "constant.nii.gz", np.full((16, 16, 16), -1000, dtype=np.int16), np.eye(4))
    nans = np.zeros((16, 16, 16), dtype=np.float32)
    nans[3, 4, 5] = np.nan
    save_nifti(folder / "nans.nii.gz", nans, np.eye(4))
    image = nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16), dtype=np.float32), np.eye(4))
    header = image.header
    header["srow_x"] = [0, 0, 0, 0]  # singular sform, no qform
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(image.dataobj, None, header=header), folder / "singular.nii.gz")
    return {"garbage": "unreadable", "flat2d": "not a 3D volume", "constant": "same value",
            "nans": "NaN", "singular": "not invertible"}


def read_report(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    write_synthetic_ct(folder, 6, size=24, spacing_mm=(13.0, 13.0, 15.0), seed=1)
    bad = write_bad_inputs(folder)
    return folder, bad


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    folder, bad = source
    out = tmp_path_factory.mktemp("shards")
    result = prep_drr(folder, out, xray_size=XRAY, volume_sizes=SIZES)
    return out, result, bad


# ---- end to end ------------------------------------------------------------------------------
def test_prep_writes_a_loadable_shard_set(prepared):
    out, result, _ = prepared
    assert result.manifest == out / "manifest.json" and result.n_groups == 11
    assert result.n_shards == 6  # one per usable CT, contiguous although group 0 (constant.nii.gz) is empty
    assert sorted(p.name for p in out.glob("shard-*.h5")) == [f"shard-{j:05d}.h5" for j in range(6)]
    manifest = read_manifest(out)
    assert set(manifest.fields) == {"xray", "fov_mm", "volume_16", "volume_32"}
    assert manifest.fields["xray"].shape == (2, XRAY, XRAY)
    assert manifest.attrs["hu_window"] == list(XRAY2CT_HU_WINDOW)
    assert manifest.attrs["geometry"]["mode"] == "parallel"
    patients = [p for split in manifest.splits.values() for p in split]
    assert sorted(patients) == [f"ct_{i:04d}" for i in range(6)]
    train = ShardDataset(out, "train", ["xray", "volume_32"])
    sample = train[0]
    xray, volume = sample["xray"].numpy()[0], sample["volume_32"].numpy()[0]  # ShardDataset adds a channel axis
    assert xray.shape == (2, XRAY, XRAY) and 0 <= xray.min() and xray.max() < 1 and xray.max() > 0.3
    assert volume.shape == (32, 32, 32) and volume.min() == 0.0 and 0.3 < volume.max() <= 1.0


def test_no_patient_in_two_splits_and_split_is_by_hash(prepared):
    out, _, _ = prepared
    manifest = read_manifest(out)
    splits = manifest.splits
    assert set(splits) == {"train", "validation", "test"}  # the default holds a test split out
    assert manifest.attrs["split_fractions"] == {"train": 0.8, "validation": 0.1, "test": 0.1}
    expected = patient_split([f"ct_{i:04d}" for i in range(6)], {"train": 0.8, "validation": 0.1, "test": 0.1})
    assert {k: list(v) for k, v in splits.items()} == expected
    assert not set(splits["train"]) & set(splits["validation"]) and not set(splits["test"]) & (
        set(splits["train"]) | set(splits["validation"]))
    for name in splits:
        ids = [str(ShardDataset(out, name, ["fov_mm"])[k]["patient_id"]) for k in range(len(splits[name]))]
        assert sorted(ids) == sorted(splits[name])


def test_bad_inputs_are_reported_not_fatal(prepared):
    out, result, bad = prepared
    rows = read_report(out / "prep_report.csv")
    assert len(rows) == 11  # every input appears once
    skipped = {r["patient_id"]: r["reason"] for r in rows if r["status"] == "skipped"}
    assert set(skipped) == set(bad)
    for name, fragment in bad.items():
        assert fragment in skipped[name], (name, skipped[name])
        assert any(name in path and reason == skipped[name] for path, reason in result.bad_files)
    assert {patient_id_of(r["path"]) for r in rows} == {r["patient_id"] for r in rows}


def test_rerun_is_idempotent(prepared, source):
    out, first, _ = prepared
    before = {p.name: digest(p) for p in out.rglob("*") if p.is_file()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = prep_drr(source[0], out, xray_size=XRAY, volume_sizes=SIZES)
    assert again.written == () and sorted(again.skipped) == list(range(first.n_groups))
    assert {p.name: digest(p) for p in out.rglob("*") if p.is_file()} == before
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def test_array_tasks_partition_the_files_and_match_one_task(prepared, source, tmp_path):
    out_single, _, _ = prepared
    folder = source[0]
    task0 = prep_drr(folder, tmp_path, xray_size=XRAY, volume_sizes=SIZES, task_index=0, n_tasks=3)
    assert task0.written == (0, 3, 6, 9) and task0.manifest is None  # others not done yet
    task2 = prep_drr(folder, tmp_path, xray_size=XRAY, volume_sizes=SIZES, task_index=2, n_tasks=3)
    assert task2.written == (2, 5, 8) and task2.manifest is None
    task1 = prep_drr(folder, tmp_path, xray_size=XRAY, volume_sizes=SIZES, task_index=1, n_tasks=3)
    assert task1.written == (1, 4, 7, 10) and task1.manifest is not None
    assert read_manifest(tmp_path).splits == read_manifest(out_single).splits
    assert (tmp_path / "prep_report.csv").read_text() == (out_single / "prep_report.csv").read_text()
    for shard in out_single.glob("shard-*.h5"):
        with h5py.File(shard, "r") as a, h5py.File(tmp_path / shard.name, "r") as b:
            assert np.array_equal(a["volume_32"][:], b["volume_32"][:])
            assert np.array_equal(a["xray"][:], b["xray"][:])


def test_several_files_per_shard(source, tmp_path):
    result = prep_drr(source[0], tmp_path, xray_size=XRAY, volume_sizes=(16,), files_per_shard=2)
    assert result.n_groups == 6 and result.n_shards == 4  # the last two groups hold only bad files
    manifest = read_manifest(tmp_path)
    assert [info.n_samples for info in manifest.shards] == [1, 2, 2, 1]
    rows = read_report(tmp_path / "prep_report.csv")
    assert {r["shard"] for r in rows if r["status"] == "ok"} == {"0", "1", "2", "3"}


def test_interrupted_shard_is_rewritten(prepared, source, tmp_path):
    folder = source[0]
    prep_drr(folder, tmp_path, xray_size=XRAY, volume_sizes=(16,))
    published = tmp_path / "shard-00003.h5"  # group 4 (ct_0003): group 0 held only a bad file
    intact = published.read_bytes()
    published.write_bytes(intact[:100])  # truncated in place, as if the disk lost the tail
    (tmp_path / "manifest.json").unlink()
    result = prep_drr(folder, tmp_path, xray_size=XRAY, volume_sizes=(16,))
    assert result.written == (4,) and result.manifest is not None
    assert published.read_bytes() == intact  # deterministic rewrite, republished
    read_manifest(tmp_path)


def test_split_fractions_option_gives_patient_level_splits_with_a_test_split(source, tmp_path):
    folder = source[0]
    cli_main(["prep", "drr", "--src", str(folder), "--out", str(tmp_path), "--xray-size", "32", "--volume-sizes", "16",
              "--split-fractions", "0.5,0.2,0.3"])
    manifest = read_manifest(tmp_path)
    patients = [f"ct_{i:04d}" for i in range(6)]
    expected = patient_split(patients, {"train": 0.5, "validation": 0.2, "test": 0.3})
    assert {k: list(v) for k, v in manifest.splits.items()} == expected and manifest.attrs["split_fractions"] == {"train": 0.5, "validation": 0.2,
                                                                                "test": 0.3}
    assert expected["test"] and sorted(p for s in expected.values() for p in s) == patients
    test = ShardDataset(tmp_path, "test", ["fov_mm"])
    assert sorted(test[k]["patient_id"] for k in range(len(test))) == expected["test"]


def test_bad_split_fractions_are_refused_with_the_fix():
    assert parse_split_fractions("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.8,0.3,0.1", "0.5,0.5,0.5,-0.5", "a,b", "1.2,-0.2"):
        with pytest.raises(ValueError, match="split-fractions"):
            parse_split_fractions(bad)


def test_leakage_guard_refuses_a_patient_in_two_splits(prepared, tmp_path):
    out, _, _ = prepared
    import json
    import shutil

    copy = tmp_path / "leaky"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    patient = manifest["splits"]["train"][0]
    manifest["splits"]["test"] = sorted(manifest["splits"]["test"] + [patient])  # the same patient in train and test
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardSetError, match=f"leakage.*{patient}"):
        read_manifest(copy)
    with pytest.raises(ShardSetError, match="leakage"):
        ShardDataset(copy, "test", ["fov_mm"])


def test_task_arguments_are_checked(source, tmp_path):
    with pytest.raises(ValueError, match="task_index"):
        prep_drr(source[0], tmp_path, task_index=2, n_tasks=2)
    with pytest.raises(FileNotFoundError, match="no .nii"):
        prep_drr(tmp_path, tmp_path / "out")


# ---- geometry of loading and resampling --------------------------------------------------------
def test_resampling_follows_the_spacing_and_centres_the_scan():
    # HU equal to the world coordinate (mm from the scan centre) along each axis: trilinear is exact
    shape, spacing = (20, 24, 10), (3.0, 2.5, 7.0)
    coords = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    for axis in range(3):
        values = np.broadcast_to(np.expand_dims(coords[axis], [a for a in range(3) if a != axis]), shape)
        ct = CTVolume(hu=np.ascontiguousarray(values, dtype=np.float32), spacing_mm=spacing)
        cube = resample_to_cube(ct, 16, fov_mm=60.0).numpy()
        centres = (np.arange(16) - 7.5) * 60.0 / 16
        expected = np.broadcast_to(np.expand_dims(centres, [a for a in range(3) if a != axis]), cube.shape)
        inside = np.abs(expected) < (shape[axis] - 1) / 2 * spacing[axis]  # away from the padded faces
        other = [a for a in range(3) if a != axis]
        for a in other:  # the other axes must be inside the scan too
            limit = (shape[a] - 1) / 2 * spacing[a]
            inside &= np.abs(np.broadcast_to(np.expand_dims(centres, [b for b in range(3) if b != a]), cube.shape)) < limit
        assert inside.sum() > 100
        assert np.allclose(cube[inside], expected[inside], atol=1e-3), axis
        assert np.all(cube[~inside & (np.abs(expected) > shape[axis] / 2 * spacing[axis] + 60 / 16)] == -1024.0)


def test_box_average_before_a_large_shrink_keeps_linear_values_exact():
    shape, spacing = (64, 64, 64), (1.0, 1.0, 1.0)
    z = (np.arange(64) - 31.5)[None, None, :] * np.ones(shape)
    cube = resample_to_cube(CTVolume(hu=z.astype(np.float32), spacing_mm=spacing), 8, fov_mm=64.0).numpy()
    assert np.allclose(cube[3, 3], (np.arange(8) - 3.5) * 8.0, atol=1e-4)


def test_window_maps_the_x2ct_range_to_unit_interval():
    hu = torch.tensor([-2000.0, -1024.0, 226.0, 1476.0, 3000.0])
    assert torch.allclose(hu_to_unit_interval(hu), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def _sample_from(tmp_path, name, array, affine):
    path = save_nifti(tmp_path / f"{name}.nii.gz", array, affine)
    return ct_to_sample(load_ct(path), DRRPrepConfig(xray_size=XRAY, volume_sizes=(16,)))


def test_the_affine_is_honoured(tmp_path):
    shape, spacing = (24, 24, 24), (12.0, 12.0, 12.0)
    ras, ras_affine = synthetic_ct_volume(0, shape, spacing, seed=5, lps=False)
    lps, lps_affine = synthetic_ct_volume(0, shape, spacing, seed=5, lps=True)
    assert not np.array_equal(ras, lps)
    a = _sample_from(tmp_path, "ras", ras, ras_affine)
    b = _sample_from(tmp_path, "lps", lps, lps_affine)  # same anatomy: flipped array + flipped affine
    assert np.allclose(a["xray"], b["xray"], atol=1e-6)
    assert np.allclose(a["volume_16"], b["volume_16"], atol=1e-6)
    # the same affine with a left-right flipped array is the mirrored patient
    mirrored = _sample_from(tmp_path, "mirrored", np.ascontiguousarray(ras[::-1]), ras_affine)
    assert np.allclose(mirrored["xray"][0], a["xray"][0][:, ::-1], atol=1e-5)  # frontal: columns flip
    assert np.allclose(mirrored["xray"][1], a["xray"][1], atol=1e-5)  # lateral: rays along L-R, unchanged
    assert np.allclose(mirrored["volume_16"], a["volume_16"][::-1], atol=1e-6)
    assert not np.allclose(mirrored["xray"][0], a["xray"][0], atol=1e-3)


def test_heart_shows_on_the_viewers_right_of_the_frontal_drr(tmp_path):
    lps, affine = synthetic_ct_volume(0, (32, 32, 32), (10.0, 10.0, 10.0), seed=0, lps=True)
    sample = _sample_from(tmp_path, "chest", lps, affine)
    frontal = sample["xray"][0]
    middle_rows = frontal[10:20]
    # the heart (patient's left, soft tissue) fills the left lung field: the viewer's right is denser
    assert middle_rows[:, 17:26].mean() > middle_rows[:, 6:15].mean()
