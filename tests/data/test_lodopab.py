from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctpipe.data.datasets import ShardDataset
from ctpipe.data.lodopab import LoDoPaBError, infer_geometry, inspect_lodopab, prep_lodopab
from ctpipe.data.shards import MANIFEST_NAME, read_manifest, shard_path
from ctpipe.ops.geometry import ParallelBeamGeometry

GEOMETRY = ParallelBeamGeometry.lodopab().scaled(16, 12)  # 25 detector bins
FILES = {"train": [6, 6, 3], "validation": [4], "test": [2, 3]}  # samples per raw file


def _write_h5(path: Path, data: np.ndarray, key: str = "data") -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset(key, data=data)


def make_raw(folder: Path, seed: int = 0, csv: bool = True) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """A raw LoDoPaB-layout folder with random data; returns the arrays per part and file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    first_patient = {"train": 0, "validation": 100, "test": 200}
    for part, counts in FILES.items():
        arrays[part] = []
        for index, n in enumerate(counts):
            obs = rng.random((n, *GEOMETRY.sinogram_shape), dtype=np.float32)
            gt = rng.random((n, *GEOMETRY.image_shape), dtype=np.float32)
            _write_h5(folder / f"observation_{part}_{index:03d}.hdf5", obs)
            _write_h5(folder / f"ground_truth_{part}_{index:03d}.hdf5", gt)
            arrays[part].append((obs, gt))
        if csv:
            ids = first_patient[part] + rng.integers(0, 4, size=sum(counts))
            (folder / f"patient_ids_rand_{part}.csv").write_text("".join(f"{i}\n" for i in ids))
    return arrays


def _mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(root.iterdir())}


def _only_complete_outputs(out: Path) -> list[str]:
    """Files left in ``out``, besides ``prep.json`` (which prep, source and settings own the folder)."""
    return sorted(p.name for p in out.iterdir() if p.name != "prep.json") if out.exists() else []


@pytest.fixture()
def raw(tmp_path: Path) -> tuple[Path, dict]:
    src = tmp_path / "raw"
    return src, make_raw(src)


def test_prep_round_trip_gives_identical_arrays(raw, tmp_path: Path) -> None:
    src, arrays = raw
    out = tmp_path / "out"
    result = prep_lodopab(src, out, progress=False)
    assert result.written == tuple(range(6)) and result.skipped == () and result.manifest == out / MANIFEST_NAME
    manifest = read_manifest(out)
    assert manifest.geometry == GEOMETRY.to_dict()
    assert manifest.fields["sinogram"].shape == (12, 25) and manifest.fields["image"].shape == (16, 16)
    for part, files in arrays.items():
        dataset = ShardDataset(out, part, ["sinogram", "image"])
        csv_ids = (src / f"patient_ids_rand_{part}.csv").read_text().split()
        assert len(dataset) == sum(FILES[part]) == len(csv_ids)
        i = 0
        for file_index, (obs, gt) in enumerate(files):
            for row in range(len(obs)):
                item = dataset[i]
                np.testing.assert_array_equal(item["sinogram"][0].numpy(), obs[row])
                np.testing.assert_array_equal(item["image"][0].numpy(), gt[row])
                assert item["sample_id"] == f"{part}-{file_index:03d}-{row:03d}"
                assert item["patient_id"] == f"{part}-{int(csv_ids[i]):04d}"
                i += 1
    for info in manifest.shards:
        assert info.sha256 == hashlib.sha256((out / info.file).read_bytes()).hexdigest()
    owners = {p: s for s, patients in manifest.splits.items() for p in patients}
    assert sum(len(v) for v in manifest.splits.values()) == len(owners)  # no patient in two splits
    assert manifest.shards[3].source_files == ("observation_validation_000.hdf5", "ground_truth_validation_000.hdf5")


def test_rerun_is_idempotent_and_resumes_after_damage(raw, tmp_path: Path) -> None:
    src, _ = raw
    out = tmp_path / "out"
    prep_lodopab(src, out, progress=False)
    reference = {p.name: p.read_bytes() for p in out.iterdir()}
    before = _mtimes(out)
    again = prep_lodopab(src, out, progress=False)
    assert again.written == () and again.skipped == tuple(range(6))
    assert _mtimes(out) == before  # nothing touched, manifest included
    shard_path(out, 2).unlink()
    with open(shard_path(out, 4), "r+b") as handle:
        handle.truncate(shard_path(out, 4).stat().st_size // 2)
    (out / ".shard-00001.h5.leftover.tmp").write_bytes(b"interrupted")  # a killed task's temporary file
    resumed = prep_lodopab(src, out, progress=False)
    assert resumed.written == (2, 4) and resumed.manifest is not None
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference


def test_array_tasks_give_the_same_manifest_as_one_task(raw, tmp_path: Path) -> None:
    src, _ = raw
    single, split = tmp_path / "single", tmp_path / "split"
    prep_lodopab(src, single, progress=False)
    first = prep_lodopab(src, split, task_index=1, n_tasks=2, progress=False)
    assert first.written == (1, 3, 5) and first.manifest is None
    assert not (split / MANIFEST_NAME).exists()
    second = prep_lodopab(src, split, task_index=0, n_tasks=2, progress=False)
    assert second.written == (0, 2, 4) and second.manifest == split / MANIFEST_NAME
    assert (single / MANIFEST_NAME).read_bytes() == (split / MANIFEST_NAME).read_bytes()


def test_parts_subset_and_missing_csv_use_pseudo_patients(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    make_raw(src, csv=False)
    out = tmp_path / "out"
    prep_lodopab(src, out, parts=("test", "validation"), progress=False)
    manifest = read_manifest(out)
    assert manifest.splits == {"validation": ("validation-file000",), "test": ("test-file000", "test-file001")}
    assert manifest.attrs["patient_id_source"]["test"] == "one pseudo-patient per raw file"
    assert [info.n_samples for info in manifest.shards] == [4, 2, 3]  # global numbering: validation before test


def test_geometry_inference() -> None:
    assert infer_geometry((1000, 513), (362, 362), "x") == ParallelBeamGeometry.lodopab()
    assert infer_geometry((180, 183), (128, 128), "x") == ParallelBeamGeometry.lodopab().scaled(128, 180)
    with pytest.raises(LoDoPaBError, match=r"obs\.hdf5.*513 detector bins.*183"):
        infer_geometry((1000, 513), (128, 128), "obs.hdf5")


def _corrupt(src: Path, case: str) -> str:
    """Damage the raw folder; return the file name the error must mention."""
    if case == "missing_folder":
        shutil.rmtree(src)
        return src.name
    if case == "no_files_for_part":
        for p in src.glob("*_validation_*.hdf5"):
            p.unlink()
        return "observation_validation_000.hdf5"
    if case == "truncated":
        path = src / "ground_truth_train_001.hdf5"
        path.write_bytes(path.read_bytes()[:1000])
        return path.name
    if case == "wrong_key":
        path = src / "observation_test_001.hdf5"
        _write_h5(path, np.zeros((3, *GEOMETRY.sinogram_shape), np.float32), key="obs")
        return path.name
    if case == "wrong_shape":
        path = src / "ground_truth_test_000.hdf5"
        _write_h5(path, np.zeros((2, 18, 18), np.float32))
        return path.name
    if case == "mismatched_counts":
        path = src / "ground_truth_train_000.hdf5"
        _write_h5(path, np.zeros((5, 16, 16), np.float32))
        return "observation_train_000.hdf5"
    if case == "nan":
        path = src / "observation_train_001.hdf5"
        data = np.zeros((6, *GEOMETRY.sinogram_shape), np.float32)
        data[4, 3, 2] = np.inf
        _write_h5(path, data)
        return "observation_train_001.hdf5: sample index 4"
    if case == "orphan_observation":
        (src / "ground_truth_test_001.hdf5").unlink()
        return "observation_test_001.hdf5"
    if case == "orphan_ground_truth":
        (src / "observation_train_002.hdf5").unlink()
        return "ground_truth_train_002.hdf5"
    if case == "csv_lines":
        path = src / "patient_ids_rand_validation.csv"
        path.write_text(path.read_text() + "7\n")
        return path.name
    raise AssertionError(case)


BAD_CASES = ["missing_folder", "no_files_for_part", "truncated", "wrong_key", "wrong_shape", "mismatched_counts",
             "nan", "orphan_observation", "orphan_ground_truth", "csv_lines"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_clear_error_and_writes_nothing(raw, tmp_path: Path, case: str) -> None:
    src, _ = raw
    out = tmp_path / "out"
    needle = _corrupt(src, case)
    with pytest.raises(LoDoPaBError) as info:
        prep_lodopab(src, out, progress=False)
    assert needle in str(info.value)
    left = _only_complete_outputs(out)
    if case == "nan":  # data is checked per file: the shards before the bad file are complete and kept
        assert left == ["shard-00000.h5", "shard-00000.json"]
    else:  # layout/metadata problems are found before anything is written
        assert left == []


def test_nan_error_then_fixed_input_resumes(raw, tmp_path: Path) -> None:
    src, arrays = raw
    out = tmp_path / "out"
    _corrupt(src, "nan")
    with pytest.raises(LoDoPaBError):
        prep_lodopab(src, out, progress=False)
    _write_h5(src / "observation_train_001.hdf5", arrays["train"][1][0])
    resumed = prep_lodopab(src, out, progress=False)
    assert resumed.skipped == (0,) and resumed.written == (1, 2, 3, 4, 5)


def test_inspect_reads_csv_ids_in_file_order(raw) -> None:
    src, _ = raw
    layout = inspect_lodopab(src)
    ids = (src / "patient_ids_rand_train.csv").read_text().split()
    pair = [p for p in layout.pairs if p.part == "train" and p.file_index == 1][0]
    assert pair.shard_index == 1 and pair.n_samples == 6
    assert list(pair.patient_ids) == [f"train-{int(i):04d}" for i in ids[6:12]]
    assert json.dumps(layout.geometry.to_dict())
