from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ctpipe.config import DataConfig
from ctpipe.data.datasets import ShardDataset, load_splits, patients_in
from ctpipe.data.shards import FieldSpec, finalize_manifest, patient_split, shard_path, write_shard

FIELDS = {"input": FieldSpec((6, 5), "float16", unit="a.u."), "target": FieldSpec((3, 4, 4), "float32", unit="HU")}
PATIENTS = [f"pat-{k:02d}" for k in range(12)]


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """Three shards; sample ``k`` of shard ``i`` belongs to patient ``PATIENTS[(5 i + k) % 12]``."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(3)
    truth: dict[str, dict] = {}
    for index, n in enumerate((7, 5, 6)):
        arrays = {"input": rng.random((n, 6, 5)).astype(np.float16), "target": rng.random((n, 3, 4, 4), dtype=np.float32)}
        sample_ids = [f"x{index}-{k}" for k in range(n)]
        patient_ids = [PATIENTS[(5 * index + k) % 12] for k in range(n)]
        write_shard(shard_path(root, index), FIELDS, arrays, sample_ids, patient_ids)
        for k, sample_id in enumerate(sample_ids):
            truth[sample_id] = {"input": arrays["input"][k], "target": arrays["target"][k], "patient_id": patient_ids[k]}
    splits = patient_split(PATIENTS, {"train": 0.5, "validation": 0.25, "test": 0.25})
    finalize_manifest(root, splits, {"geometry": None})
    return root, truth


def _expected_ids(root: Path, truth: dict[str, dict], split: str) -> list[str]:
    wanted = set(patients_in(root, split))
    return [sid for sid in truth if truth[sid]["patient_id"] in wanted]  # insertion order = shard order


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_dataset_returns_exactly_the_split_samples_in_order(shard_set, split: str) -> None:
    root, truth = shard_set
    dataset = ShardDataset(root, split, ["input", "target"])
    expected = _expected_ids(root, truth, split)
    assert len(dataset) == len(expected) > 0
    for i, sample_id in enumerate(expected):
        item = dataset[i]
        assert item["sample_id"] == sample_id and item["index"] == i
        assert item["patient_id"] == truth[sample_id]["patient_id"]
        assert item["input"].dtype == torch.float32 and item["input"].shape == (1, 6, 5)
        assert item["target"].shape == (1, 3, 4, 4)
        np.testing.assert_array_equal(item["input"][0].numpy(), truth[sample_id]["input"].astype(np.float32))
        np.testing.assert_array_equal(item["target"][0].numpy(), truth[sample_id]["target"])
    assert dataset[-1]["sample_id"] == expected[-1]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_splits_partition_the_samples_by_patient(shard_set) -> None:
    root, truth = shard_set
    seen: dict[str, str] = {}
    total = 0
    for split in ("train", "validation", "test"):
        dataset = ShardDataset(root, split, ["target"])
        total += len(dataset)
        for i in range(len(dataset)):
            patient = dataset[i]["patient_id"]
            assert seen.setdefault(patient, split) == split
    assert total == len(truth)
    assert sorted(patients_in(root, "train") + patients_in(root, "validation") + patients_in(root, "test")) == PATIENTS


def test_unknown_split_or_field_lists_what_exists(shard_set) -> None:
    root, _ = shard_set
    with pytest.raises(KeyError, match=r"'training'.*\['test', 'train', 'validation'\]"):
        ShardDataset(root, "training", ["input"])
    with pytest.raises(KeyError, match=r"'image'.*\['input', 'target'\]"):
        ShardDataset(root, "train", ["input", "image"])
    with pytest.raises(KeyError, match="'dev'"):
        patients_in(root, "dev")


def test_load_splits_gives_the_three_splits_and_none_for_an_empty_one(shard_set) -> None:
    root, truth = shard_set
    train, val, test = load_splits(DataConfig(root=str(root)), ["target"])
    assert [len(d) for d in (train, val, test)] == [len(_expected_ids(root, truth, s))
                                                    for s in ("train", "validation", "test")]
    _, val, _ = load_splits(DataConfig(root=str(root), val_split=""), ["target"])  # no validation on purpose
    assert val is None
    with pytest.raises(ValueError, match=rf"no patients in split ''.*'train': {len(patients_in(root, 'train'))}"):
        load_splits(DataConfig(root=str(root), train_split=""), ["target"])


def test_pickling_drops_open_handles(shard_set) -> None:
    root, _ = shard_set
    dataset = ShardDataset(root, "train", ["input"])
    first = dataset[0]
    assert dataset._handles  # opened lazily on first access
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handles == {}
    torch.testing.assert_close(clone[0]["input"], first["input"])
    dataset.close()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(shard_set, context: str) -> None:
    root, _ = shard_set
    dataset = ShardDataset(root, "train", ["input", "target"])
    dataset[0]  # the parent opens a handle before the workers start: they must not reuse it
    direct = [dataset[i] for i in range(len(dataset))]
    workers = 2 if context == "fork" else 1  # spawn pays a full interpreter + torch import per worker
    loader = DataLoader(dataset, batch_size=3, num_workers=workers, multiprocessing_context=context)
    batches = list(loader)
    assert [sid for b in batches for sid in b["sample_id"]] == [d["sample_id"] for d in direct]
    torch.testing.assert_close(torch.cat([b["target"] for b in batches]), torch.stack([d["target"] for d in direct]))
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(dataset)))
