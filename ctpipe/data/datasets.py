"""Torch datasets over shard sets (see :mod:`ctpipe.data.shards`).

:class:`ShardDataset` maps a flat index onto ``(shard, row)`` pairs of the samples whose patient belongs
to the requested split. HDF5 handles are opened lazily, once per process, and are never pickled, so the
dataset works with ``DataLoader(num_workers>0)`` under both fork and spawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ctpipe.data.shards import PATIENT_ID_KEY, SAMPLE_ID_KEY, Manifest, ShardSetError, read_manifest


def patients_in(root: str | os.PathLike[str], split: str) -> list[str]:
    """The patient ids of ``split`` in the shard set at ``root`` (sorted)."""
    manifest = read_manifest(root)
    _check_split(manifest, split)
    return sorted(manifest.splits[split])


def _check_split(manifest: Manifest, split: str) -> None:
    if split not in manifest.splits:
        raise KeyError(f"unknown split {split!r} for the shard set {manifest.root}; "
                       f"it has splits {sorted(manifest.splits)}")


def _split_index(manifest: Manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(shard position, row)`` of every sample of ``split``, in manifest order."""
    wanted = set(manifest.splits[split])
    shards, rows = [], []
    for position, info in enumerate(manifest.shards):
        in_split = np.array([info.patient_ids[k] in wanted for k in info.sample_patients], dtype=bool)
        selected = np.flatnonzero(in_split)
        shards.append(np.full(selected.shape, position, dtype=np.int64))
        rows.append(selected.astype(np.int64))
    if not shards:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(shards), np.concatenate(rows)


def load_splits(data: Any, fields: Sequence[str]) -> tuple[ShardDataset, ShardDataset | None, ShardDataset | None]:
    """Train / validation / test datasets of ``fields`` from the shard set of ``data`` (a data config: ``root``,
    ``train_split``, ``val_split``, ``test_split``); validation and test are None when their split is empty,
    an empty training split raises."""
    splits = read_manifest(data.root).splits

    def load(split: str) -> ShardDataset | None:
        return ShardDataset(data.root, split, tuple(fields)) if splits.get(split) else None

    train = load(data.train_split)
    if train is None:
        counts = {name: len(patients) for name, patients in splits.items()}
        raise ValueError(f"shard set {data.root} has no patients in split {data.train_split!r}; patients per split: "
                         f"{counts}")
    return train, load(data.val_split), load(data.test_split)


def check_split_names(root: str | os.PathLike[str], names: Mapping[str, str]) -> None:
    """Refuse a configured split name (``{option: name}``) that the shard set at ``root`` does not have.

    An empty name means "no such split" on purpose (e.g. ``data.val_split=`` to train without validation).
    """
    manifest = read_manifest(root)
    unknown = {option: name for option, name in names.items() if name and name not in manifest.splits}
    if unknown:
        described = ", ".join(f"{option}={name!r}" for option, name in unknown.items())
        raise ShardSetError(
            f"{described}: no such split in the shard set {manifest.root} (its splits: {sorted(manifest.splits)}); "
            f"set {next(iter(unknown))} to one of them (or to an empty value to go without that split)")


class ShardDataset(Dataset):
    """Samples of one split of a shard set.

    ``dataset[i]`` is ``{field: float32 tensor (1, *shape), "sample_id": str, "patient_id": str,
    "index": i}``. Order is deterministic: manifest shard order, then row order inside each shard.
    """

    def __init__(self, root: str | os.PathLike[str], split: str, fields: Sequence[str]) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        _check_split(self.manifest, split)
        if isinstance(fields, str):
            fields = [fields]
        unknown = [f for f in fields if f not in self.manifest.fields]
        if unknown or not fields:
            raise KeyError(f"unknown fields {unknown or list(fields)} for the shard set {self.root}; "
                           f"it has fields {sorted(self.manifest.fields)}")
        self.split = split
        self.fields = tuple(fields)
        self._shard_of, self._row_of = _split_index(self.manifest, split)
        self._handles: dict[int, h5py.File] = {}
        self._owner_pid: int | None = None

    def __len__(self) -> int:
        return int(self._shard_of.shape[0])

    # ---- lazy, per-process HDF5 handles ------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_owner_pid"] = None
        return state

    def _handle(self, position: int) -> h5py.File:
        if self._owner_pid != os.getpid():  # a forked worker must not reuse the parent's handles
            self._handles = {}
            self._owner_pid = os.getpid()
        handle = self._handles.get(position)
        if handle is None:
            handle = self._open(position)
            self._handles[position] = handle
        return handle

    def _open(self, position: int) -> h5py.File:
        info = self.manifest.shards[position]
        path = self.manifest.shard_path(info)
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            raise ShardSetError(f"cannot open shard {path} ({error}); re-run the prep to rewrite it") from error
        if handle[SAMPLE_ID_KEY].shape[0] != info.n_samples:
            handle.close()
            raise ShardSetError(f"shard {path} holds a different sample count than {self.root / 'manifest.json'} "
                                "records; re-run the prep to rewrite it")
        return handle

    def close(self) -> None:
        """Close this process's open handles (they reopen on the next access)."""
        if self._owner_pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles = {}

    def _non_finite(self, index: int, name: str, array: np.ndarray) -> None:
        handle = self._handle(int(self._shard_of[index]))
        row = int(self._row_of[index])
        path = self.manifest.shard_path(self.manifest.shards[int(self._shard_of[index])])
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ShardSetError(f"shard {path}, sample {handle[SAMPLE_ID_KEY].asstr()[row]!r} (row {row}, split "
                            f"{self.split!r}): field {name!r} holds {bad} NaN/Inf values; nothing was trained on it. "
                            "Re-run the prep that wrote this set (it refuses non-finite data) or remove the sample")

    # ---- access ----------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for split {self.split!r} with {n} samples")
        index = int(index) % n
        handle = self._handle(int(self._shard_of[index]))
        row = int(self._row_of[index])
        sample: dict[str, Any] = {}
        for name in self.fields:
            array = np.asarray(handle[name][row], dtype=np.float32)
            if not np.isfinite(array).all():
                self._non_finite(index, name, array)
            sample[name] = torch.from_numpy(array).unsqueeze(0)
        sample[SAMPLE_ID_KEY] = handle[SAMPLE_ID_KEY].asstr()[row]
        sample[PATIENT_ID_KEY] = handle[PATIENT_ID_KEY].asstr()[row]
        sample["index"] = index
        return sample
