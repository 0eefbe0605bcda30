from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctpipe.data.shards import (
    MANIFEST_NAME,
    FieldSpec,
    ShardSetError,
    finalize_manifest,
    patient_split,
    read_manifest,
    read_shard_attrs,
    shard_is_complete,
    shard_path,
    sidecar_path,
    write_shard,
)

FIELDS = {
    "image": FieldSpec((5, 4), "float32", unit="mu/mu_max", description="test image"),
    "xray": FieldSpec((2, 3, 3), "float16", unit="a.u."),
}


def _arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.random((n, 5, 4), dtype=np.float32), "xray": rng.random((n, 2, 3, 3)).astype(np.float16)}


def _write(root: Path, index: int, patients: list[str], seed: int = 0):
    n = len(patients)
    return write_shard(shard_path(root, index), FIELDS, _arrays(n, seed), [f"s{index}-{k}" for k in range(n)],
                       patients, attrs={"geometry": {"n": 4}, "note": "x"}, source_files=[f"raw{index}.h5"])


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_write_shard_layout_and_values(tmp_path: Path) -> None:
    arrays = _arrays(3)
    info = write_shard(tmp_path / "shard-00000.h5", FIELDS, arrays, ["a", "b", "c"], ["p1", "p2", "p1"],
                       attrs={"geometry": {"n": 4}}, source_files=["x.h5"])
    path = tmp_path / "shard-00000.h5"
    with h5py.File(path, "r") as f:
        assert f["image"].dtype == np.float32 and f["xray"].dtype == np.float16
        assert f["image"].chunks == (1, 5, 4) and f["xray"].chunks == (1, 2, 3, 3)
        assert f["image"].compression is None and f["xray"].compression is None
        np.testing.assert_array_equal(f["image"][...], arrays["image"])
        np.testing.assert_array_equal(f["xray"][...], arrays["xray"])
        assert list(f["sample_id"].asstr()[...]) == ["a", "b", "c"]
        assert list(f["patient_id"].asstr()[...]) == ["p1", "p2", "p1"]
        assert f["image"].attrs["unit"] == "mu/mu_max"
    attrs = read_shard_attrs(path)
    assert attrs["geometry"] == {"n": 4} and attrs["source_files"] == ["x.h5"] and attrs["schema_version"] == 1
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size_bytes == path.stat().st_size
    assert info.patient_ids == ("p1", "p2") and info.sample_patient_ids() == ["p1", "p2", "p1"]
    assert json.loads(sidecar_path(path).read_text())["sha256"] == info.sha256
    assert _leftovers(tmp_path) == ["shard-00000.h5", "shard-00000.json"]


def test_write_shard_accepts_a_stream_of_samples_and_is_byte_deterministic(tmp_path: Path) -> None:
    arrays = _arrays(4)
    stream = ({name: array[k] for name, array in arrays.items()} for k in range(4))
    a = write_shard(tmp_path / "a" / "shard-00000.h5", FIELDS, stream, list("abcd"), list("pqpq"))
    b = write_shard(tmp_path / "b" / "shard-00000.h5", FIELDS, arrays, list("abcd"), list("pqpq"))
    assert a.sha256 == b.sha256


@pytest.mark.parametrize("problem", ["nan", "shape", "missing_field", "count"])
def test_write_shard_refuses_bad_samples_and_leaves_nothing(tmp_path: Path, problem: str) -> None:
    arrays = _arrays(3)
    ids = ["a", "b", "c"]
    if problem == "nan":
        arrays["image"][2, 1, 1] = np.nan
    elif problem == "shape":
        arrays["image"] = np.zeros((3, 4, 5), np.float32)
    elif problem == "missing_field":
        del arrays["xray"]
    else:
        ids = ["a", "b"]
    with pytest.raises(ShardSetError, match="shard-00007.h5"):
        write_shard(tmp_path / "shard-00007.h5", FIELDS, arrays, ids, ["p"] * len(ids))
    assert _leftovers(tmp_path) == []


def test_shard_is_complete_detects_truncation_corruption_and_missing_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "shard-00000.h5"
    _write(tmp_path, 0, ["p"] * 3)
    assert shard_is_complete(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    assert not shard_is_complete(path)
    assert shard_is_complete(path, verify_checksum=False)  # the cheap check only looks at the size
    path.write_bytes(bytes(data[:-10]))
    assert not shard_is_complete(path, verify_checksum=False)
    _write(tmp_path, 0, ["p"] * 3)
    sidecar_path(path).unlink()
    assert not shard_is_complete(path)


def test_finalize_and_read_manifest_round_trip(tmp_path: Path) -> None:
    infos = [_write(tmp_path, 0, ["a", "a", "b"]), _write(tmp_path, 1, ["c", "c"], seed=1)]
    target = finalize_manifest(tmp_path, {"train": ["a", "c"], "validation": ["b"]}, {"geometry": {"n": 4}},
                               expected_shards=2)
    manifest = read_manifest(tmp_path)
    assert target == tmp_path / MANIFEST_NAME
    assert manifest.shards == tuple(infos)
    assert manifest.n_samples == 5
    assert manifest.fields == FIELDS
    assert manifest.geometry == {"n": 4}
    assert manifest.split_patients("train") == ("a", "c")
    assert manifest.split_of() == {"a": "train", "c": "train", "b": "validation"}
    for info in manifest.shards:
        assert info.sha256 == hashlib.sha256((tmp_path / info.file).read_bytes()).hexdigest()
    with pytest.raises(KeyError, match="validation"):
        manifest.split_patients("test")
    before = target.stat().st_mtime_ns
    finalize_manifest(tmp_path, {"train": ["c", "a"], "validation": ["b"]}, {"geometry": {"n": 4}}, expected_shards=2)
    assert target.stat().st_mtime_ns == before  # identical content: untouched


def test_finalize_refuses_missing_shards_naming_them(tmp_path: Path) -> None:
    _write(tmp_path, 0, ["a"])
    _write(tmp_path, 2, ["b"])
    with pytest.raises(ShardSetError, match="shard-00001.h5"):
        finalize_manifest(tmp_path, {"train": ["a", "b"]}, expected_shards=3)
    with pytest.raises(ShardSetError, match=r"\['shard-00001.h5'\]"):  # the gap is found without a count too
        finalize_manifest(tmp_path, {"train": ["a", "b"]})
    with pytest.raises(ShardSetError, match=r"\['shard-00001.h5', 'shard-00003.h5'\]"):
        finalize_manifest(tmp_path, {"train": ["a", "b"]}, expected_shards=4)
    (tmp_path / "shard-00002.h5").unlink()  # only the sidecar is left
    with pytest.raises(ShardSetError, match="shard-00002.h5"):
        finalize_manifest(tmp_path, {"train": ["a", "b"]})
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_finalize_refuses_bad_splits(tmp_path: Path) -> None:
    _write(tmp_path, 0, ["a", "b", "c"])
    with pytest.raises(ShardSetError, match=r"leakage.*'b'"):
        finalize_manifest(tmp_path, {"train": ["a", "b"], "validation": ["b", "c"]})
    with pytest.raises(ShardSetError, match=r"in no split.*'c'"):
        finalize_manifest(tmp_path, {"train": ["a", "b"]})
    with pytest.raises(ShardSetError, match=r"absent.*'zz'"):
        finalize_manifest(tmp_path, {"train": ["a", "b", "c", "zz"]})
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_read_manifest_refuses_a_doctored_manifest_with_leakage(tmp_path: Path) -> None:
    _write(tmp_path, 0, ["p1", "p2", "p3"])
    target = finalize_manifest(tmp_path, {"train": ["p1", "p2"], "validation": ["p3"]})
    data = json.loads(target.read_text())
    data["splits"]["validation"].append("p2")
    target.write_text(json.dumps(data))
    with pytest.raises(ShardSetError, match=r"leakage.*'p2'.*train.*validation"):
        read_manifest(tmp_path)


def test_read_manifest_missing_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_manifest(tmp_path)


def test_patient_split_is_stable_and_roughly_proportional() -> None:
    ids = [f"patient-{k:04d}" for k in range(4000)]
    split = patient_split(ids)
    # Pinned assignment: changing the hash or the cut rule would silently move patients between splits.
    expected = {"patient-0000": "validation", "patient-0001": "train", "patient-0002": "validation",
                "patient-0003": "validation", "patient-0004": "train", "patient-0005": "train"}
    where = {p: s for s, patients in split.items() for p in patients}
    assert {p: where[p] for p in expected} == expected
    assert split == patient_split(list(reversed(ids)) + ids[:10])  # order and duplicates do not matter
    assert abs(len(split["train"]) / 4000 - 0.8) < 0.03  # binomial sd is 0.0063
    assert sorted(split["train"] + split["validation"]) == sorted(ids)
    three = patient_split(ids, {"train": 0.7, "validation": 0.15, "test": 0.15}, salt="other")
    for name, fraction in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
        assert abs(len(three[name]) / 4000 - fraction) < 0.03
    assert set(three["train"]) != set(patient_split(ids, {"train": 0.7, "validation": 0.15, "test": 0.15})["train"])
    with pytest.raises(ShardSetError, match="sum to 1"):
        patient_split(ids, {"train": 0.8, "validation": 0.3})


def test_patient_split_does_not_move_existing_patients_when_more_arrive() -> None:
    small = patient_split([f"p{k}" for k in range(50)])
    large = patient_split([f"p{k}" for k in range(500)])
    for name, patients in small.items():
        assert set(patients) <= set(large[name])


def test_field_spec_validation() -> None:
    with pytest.raises(ShardSetError, match="dtype"):
        FieldSpec((3,), "float64")
    with pytest.raises(ShardSetError, match="shape"):
        FieldSpec((0, 3))
    assert FieldSpec.from_dict(FieldSpec((2, 3), "float16", "HU").to_dict()) == FieldSpec((2, 3), "float16", "HU")
