"""HDF5 shard sets: the on-disk contract between data preparation and training.

A shard set is a folder::

    manifest.json          written last, atomically (the set is usable only once it exists)
    shard-00000.h5         one HDF5 dataset per field + ``sample_id`` / ``patient_id`` strings
    shard-00000.json       sidecar: the shard's :class:`ShardInfo` (sample count, patients, SHA-256)
    ...

Every field is stored uncompressed (gzip is too slow for a training loader), chunked one sample per
chunk, as float32 or float16. Shards are written to a temporary name and renamed; the sidecar is written
after its shard, so a shard without a matching sidecar is incomplete and gets rewritten. A prep array
task writes only its own shards; :func:`shard_is_complete` lets it skip finished ones (resumable prep).
:func:`finalize_manifest` gathers the sidecars, checks the splits and writes ``manifest.json``.

Splits are by patient: ``{"train": [patient ids], "validation": [...], ...}``. A patient listed in two
splits is refused (leakage guard) both when the manifest is written and when it is read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from ctpipe.atomic import atomic_path, atomic_write_json, check_free_space
from ctpipe.errors import UserError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SAMPLE_ID_KEY = "sample_id"
PATIENT_ID_KEY = "patient_id"
RESERVED_KEYS = frozenset({SAMPLE_ID_KEY, PATIENT_ID_KEY})
ALLOWED_DTYPES = ("float32", "float16")
_SHARD_RE = re.compile(r"^shard-(\d{5})\.h5$")
_HASH_BLOCK = 1 << 22


class ShardSetError(UserError, ValueError):
    """A shard set (or the data handed to the shard writer) violates the contract."""


# ---- field declarations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """Declaration of one per-sample array field: its per-sample ``shape``, storage dtype and unit."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    unit: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if any(s < 1 for s in shape):
            raise ShardSetError(f"FieldSpec.shape must hold positive sizes, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if self.dtype not in ALLOWED_DTYPES:
            raise ShardSetError(f"FieldSpec.dtype must be one of {ALLOWED_DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "unit": self.unit, "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FieldSpec":
        return cls(
            shape=tuple(data["shape"]),
            dtype=str(data.get("dtype", "float32")),
            unit=str(data.get("unit", "")),
            description=str(data.get("description", "")),
        )


# ---- per-shard record ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records about one shard (also its sidecar JSON).

    ``patient_ids`` are the distinct patients in first-appearance order; ``sample_patients[k]`` indexes
    ``patient_ids`` for sample ``k`` so readers can split by patient without opening the shard.
    """

    file: str
    n_samples: int
    patient_ids: tuple[str, ...]
    sample_patients: tuple[int, ...]
    sha256: str
    size_bytes: int
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    source_files: tuple[str, ...] = ()

    @property
    def index(self) -> int:
        return shard_index(self.file)

    def sample_patient_ids(self) -> list[str]:
        return [self.patient_ids[k] for k in self.sample_patients]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "n_samples": self.n_samples,
            "patient_ids": list(self.patient_ids),
            "sample_patients": list(self.sample_patients),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "fields": {name: spec.to_dict() for name, spec in self.fields.items()},
            "source_files": list(self.source_files),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ShardInfo":
        return cls(
            file=str(data["file"]),
            n_samples=int(data["n_samples"]),
            patient_ids=tuple(str(p) for p in data["patient_ids"]),
            sample_patients=tuple(int(k) for k in data["sample_patients"]),
            sha256=str(data["sha256"]),
            size_bytes=int(data["size_bytes"]),
            fields={name: FieldSpec.from_dict(spec) for name, spec in data.get("fields", {}).items()},
            source_files=tuple(str(s) for s in data.get("source_files", ())),
        )


# ---- names ----------------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    """``shard-00042.h5`` for index 42."""
    if index < 0 or index > 99999:
        raise ShardSetError(f"shard index must lie in [0, 99999], got {index}")
    return f"shard-{index:05d}.h5"


def shard_index(name: str | os.PathLike[str]) -> int:
    """Inverse of :func:`shard_name`."""
    match = _SHARD_RE.match(Path(name).name)
    if match is None:
        raise ShardSetError(f"not a shard file name (expected shard-NNNNN.h5): {name}")
    return int(match.group(1))


def shard_path(root: str | os.PathLike[str], index: int) -> Path:
    return Path(root) / shard_name(index)


def sidecar_path(shard: str | os.PathLike[str]) -> Path:
    """The sidecar JSON of a shard: ``shard-00042.h5`` -> ``shard-00042.json``."""
    return Path(shard).with_suffix(".json")


def temp_files_for(shard: str | os.PathLike[str]) -> list[Path]:
    """Leftover temporary files of an interrupted write of ``shard`` (or of its sidecar)."""
    shard = Path(shard)
    names = (shard.name, sidecar_path(shard).name)
    return sorted(p for name in names for p in shard.parent.glob(f".{name}.*.tmp"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- writing ----------------------------------------------------------------------------------------
def _check_ids(sample_ids: Sequence[str], patient_ids: Sequence[str], path: Path) -> None:
    if len(sample_ids) != len(patient_ids):
        raise ShardSetError(f"{path}: {len(sample_ids)} sample ids but {len(patient_ids)} patient ids")
    if len(sample_ids) == 0:
        raise ShardSetError(f"{path}: a shard needs at least one sample")
    if len(set(sample_ids)) != len(sample_ids):
        raise ShardSetError(f"{path}: sample ids must be unique within a shard")
    for value in list(sample_ids) + list(patient_ids):
        if not isinstance(value, str) or not value:
            raise ShardSetError(f"{path}: sample and patient ids must be non-empty strings, got {value!r}")


def _check_fields(fields: Mapping[str, FieldSpec], path: Path) -> None:
    if not fields:
        raise ShardSetError(f"{path}: declare at least one field")
    for name, spec in fields.items():
        if name in RESERVED_KEYS or not name or "/" in name:
            raise ShardSetError(f"{path}: invalid field name {name!r} (reserved: {sorted(RESERVED_KEYS)})")
        if not isinstance(spec, FieldSpec):
            raise ShardSetError(f"{path}: field {name!r} must be declared with a FieldSpec, got {type(spec).__name__}")


def _iter_samples(
    samples: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]], n: int, path: Path
) -> Iterator[Mapping[str, np.ndarray]]:
    """Yield one ``{field: array}`` per sample from stacked arrays or an iterable of per-sample dicts."""
    if isinstance(samples, Mapping):
        for name, array in samples.items():
            if len(array) != n:
                raise ShardSetError(f"{path}: field {name!r} holds {len(array)} samples, expected {n}")
        for k in range(n):
            yield {name: array[k] for name, array in samples.items()}
        return
    count = 0
    for sample in samples:
        if count >= n:
            raise ShardSetError(f"{path}: more samples than the {n} sample ids given")
        yield sample
        count += 1
    if count != n:
        raise ShardSetError(f"{path}: got {count} samples but {n} sample ids")


def _store_sample(handle: h5py.File, fields: Mapping[str, FieldSpec], sample: Mapping[str, np.ndarray],
                  k: int, sample_id: str, path: Path) -> None:
    if set(sample) != set(fields):
        raise ShardSetError(f"{path}: sample {sample_id!r} has fields {sorted(sample)}, declared {sorted(fields)}")
    for name, spec in fields.items():
        value = np.asarray(sample[name])
        if value.shape != spec.shape:
            raise ShardSetError(f"{path}: field {name!r} of sample {sample_id!r} has shape {value.shape}, declared {spec.shape}")
        if not np.all(np.isfinite(value)):
            raise ShardSetError(f"{path}: field {name!r} of sample {sample_id!r} holds NaN/Inf values")
        handle[name][k] = value.astype(spec.dtype, copy=False)


def _write_hdf5(tmp: Path, target: Path, fields: Mapping[str, FieldSpec], samples: Any,
                sample_ids: Sequence[str], patient_ids: Sequence[str], attrs: Mapping[str, Any],
                source_files: Sequence[str]) -> None:
    n = len(sample_ids)
    with h5py.File(tmp, "w") as handle:
        handle.attrs["schema_version"] = SCHEMA_VERSION
        handle.attrs["attrs_json"] = json.dumps(dict(attrs), sort_keys=True, allow_nan=False)
        handle.attrs["source_files_json"] = json.dumps(list(source_files))
        for name, spec in fields.items():
            dataset = handle.create_dataset(name, shape=(n, *spec.shape), dtype=spec.dtype,
                                            chunks=(1, *spec.shape), track_times=False)
            dataset.attrs["unit"] = spec.unit
            dataset.attrs["description"] = spec.description
        for k, sample in enumerate(_iter_samples(samples, n, target)):
            _store_sample(handle, fields, sample, k, sample_ids[k], target)
        strings = h5py.string_dtype()
        handle.create_dataset(SAMPLE_ID_KEY, data=np.array(list(sample_ids), dtype=object), dtype=strings, track_times=False)
        handle.create_dataset(PATIENT_ID_KEY, data=np.array(list(patient_ids), dtype=object), dtype=strings, track_times=False)


def estimated_shard_bytes(fields: Mapping[str, FieldSpec], n: int) -> int:
    """About how many bytes a shard of ``n`` samples takes (data, ids, HDF5 chunk index and headers)."""
    data = sum(math.prod(spec.shape) * np.dtype(spec.dtype).itemsize for spec in fields.values()) * n
    return int(data * 1.02) + n * (256 + 64 * len(fields)) + (1 << 14)


def write_shard(
    path: str | os.PathLike[str],
    fields: Mapping[str, FieldSpec],
    samples: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    sample_ids: Sequence[str],
    patient_ids: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
    source_files: Sequence[str] = (),
) -> ShardInfo:
    """Write one shard atomically, then its sidecar; return its :class:`ShardInfo`.

    ``path`` must be named ``shard-NNNNN.h5``. ``samples`` is either ``{field: array (n, *shape)}`` or
    an iterable of ``{field: array shape}`` (one dict per sample, so large samples can be streamed).
    Every sample is checked against ``fields`` (shape, finite values) before the shard is renamed into
    place; on any error nothing is left behind. ``attrs`` must be JSON-serialisable.
    """
    path = Path(path)
    shard_index(path)  # validates the name
    fields = dict(fields)
    sample_ids, patient_ids = [str(s) for s in sample_ids], [str(p) for p in patient_ids]
    _check_fields(fields, path)
    _check_ids(sample_ids, patient_ids, path)
    sidecar = sidecar_path(path)
    sidecar.unlink(missing_ok=True)  # an old sidecar must never vouch for the new content
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(path, estimated_shard_bytes(fields, len(sample_ids)))
    with atomic_path(path) as tmp:
        _write_hdf5(tmp, path, fields, samples, sample_ids, patient_ids, attrs or {}, source_files)
        digest, size = sha256_file(tmp), tmp.stat().st_size
    distinct = list(dict.fromkeys(patient_ids))
    lookup = {p: i for i, p in enumerate(distinct)}
    info = ShardInfo(
        file=path.name,
        n_samples=len(sample_ids),
        patient_ids=tuple(distinct),
        sample_patients=tuple(lookup[p] for p in patient_ids),
        sha256=digest,
        size_bytes=size,
        fields=fields,
        source_files=tuple(str(s) for s in source_files),
    )
    atomic_write_json(sidecar, info.to_dict())
    return info


# ---- completeness ----------------------------------------------------------------------------------
def read_sidecar(shard: str | os.PathLike[str]) -> ShardInfo | None:
    """The shard's recorded :class:`ShardInfo`, or ``None`` if the sidecar is missing or unreadable."""
    try:
        return ShardInfo.from_dict(json.loads(sidecar_path(shard).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shard_is_complete(path: str | os.PathLike[str], verify_checksum: bool = True) -> bool:
    """True when the shard and its sidecar exist, the size matches and (by default) the SHA-256 too.

    ``verify_checksum=False`` is a cheap check (size only) for shards another task is responsible for.
    """
    path = Path(path)
    info = read_sidecar(path)
    if info is None or info.file != path.name or not path.is_file():
        return False
    if path.stat().st_size != info.size_bytes:
        return False
    return not verify_checksum or sha256_file(path) == info.sha256


# ---- splits --------------------------------------------------------------------------------------------
def _unit_hash(patient_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def patient_split(
    patient_ids: Iterable[str],
    fractions: Mapping[str, float] | None = None,
    salt: str = "ctpipe",
) -> dict[str, list[str]]:
    """Assign each distinct patient to a split by a SHA-256 hash of ``salt`` and its id.

    Stable across runs, machines and Python versions; adding patients never moves existing ones.
    ``fractions`` (default ``{"train": 0.8, "validation": 0.2}``) must be non-negative and sum to 1; the
    hash's unit interval is cut in the mapping's order. Returns ``{split: sorted patient ids}``.
    """
    fractions = dict(fractions if fractions is not None else {"train": 0.8, "validation": 0.2})
    if not fractions or any(not (f >= 0.0) for f in fractions.values()):
        raise ShardSetError(f"patient_split: fractions must be non-negative, got {fractions}")
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-9):
        raise ShardSetError(f"patient_split: fractions must sum to 1, got {fractions} (sum {sum(fractions.values())})")
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names])
    result: dict[str, list[str]] = {name: [] for name in names}
    for patient in sorted({str(p) for p in patient_ids}):
        position = int(np.searchsorted(bounds, _unit_hash(patient, salt), side="right"))
        result[names[min(position, len(names) - 1)]].append(patient)
    return result


def check_splits(splits: Mapping[str, Sequence[str]], shard_patients: Iterable[str], where: str) -> None:
    """Refuse a patient in two splits (leakage), a split naming an unknown patient, or an unassigned one."""
    seen: dict[str, str] = {}
    leaked: dict[str, list[str]] = {}
    for split, patients in splits.items():
        for patient in patients:
            if patient in seen and seen[patient] != split:
                leaked.setdefault(patient, [seen[patient]]).append(split)
            seen.setdefault(patient, split)
    if leaked:
        described = ", ".join(f"{p!r} in {s}" for p, s in sorted(leaked.items()))
        raise ShardSetError(f"{where}: patient leakage, patients in more than one split: {described}; "
                            "each patient must belong to exactly one split (use patient_split)")
    present = set(shard_patients)
    unknown, unassigned = sorted(set(seen) - present), sorted(present - set(seen))
    if unknown:
        raise ShardSetError(f"{where}: splits name patients absent from every shard: {unknown[:20]}")
    if unassigned:
        raise ShardSetError(f"{where}: patients in the shards but in no split: {unassigned[:20]} "
                            f"({len(unassigned)} in all); add them to a split")


# ---- manifest --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """A parsed, validated ``manifest.json`` (see :func:`read_manifest`)."""

    root: Path
    schema_version: int
    fields: Mapping[str, FieldSpec]
    shards: tuple[ShardInfo, ...]
    splits: Mapping[str, tuple[str, ...]]
    attrs: Mapping[str, Any]

    @property
    def n_samples(self) -> int:
        return sum(info.n_samples for info in self.shards)

    @property
    def geometry(self) -> dict[str, Any] | None:
        """The geometry dict stored in the attrs (``None`` if the set has none)."""
        value = self.attrs.get("geometry")
        return dict(value) if value is not None else None

    def split_patients(self, split: str) -> tuple[str, ...]:
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r} in {self.root / MANIFEST_NAME}; splits: {sorted(self.splits)}")
        return self.splits[split]

    def split_of(self) -> dict[str, str]:
        """``{patient_id: split}``."""
        return {patient: split for split, patients in self.splits.items() for patient in patients}

    def shard_path(self, info: ShardInfo) -> Path:
        return self.root / info.file

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "fields": {name: spec.to_dict() for name, spec in self.fields.items()},
            "splits": {name: list(patients) for name, patients in self.splits.items()},
            "attrs": dict(self.attrs),
            "shards": [_manifest_shard_entry(info) for info in self.shards],
        }


def _manifest_shard_entry(info: ShardInfo) -> dict[str, Any]:
    entry = info.to_dict()
    del entry["fields"]  # declared once at the top level
    return entry


def _gather_sidecars(root: Path, expected_shards: int | None, verify_checksums: bool) -> list[ShardInfo]:
    if expected_shards is not None:
        indices = list(range(expected_shards))
    else:  # every index up to the highest shard or sidecar present, so gaps are reported
        found = [shard_index(p.with_suffix(".h5").name) for p in root.glob("shard-*.*")
                 if _SHARD_RE.match(p.with_suffix(".h5").name) and p.suffix in (".h5", ".json")]
        indices = list(range(max(found) + 1)) if found else []
    if not indices:
        raise ShardSetError(f"{root}: no shards to gather (expected shard-00000.h5, ...); run the prep first")
    bad = [shard_name(i) for i in indices if not shard_is_complete(root / shard_name(i), verify_checksums)]
    if bad:
        raise ShardSetError(f"{root}: missing or incomplete shards {bad[:20]} ({len(bad)} in all); "
                            "re-run the prep tasks that own them")
    return [read_sidecar(root / shard_name(i)) for i in indices]  # type: ignore[misc]


def _common_fields(infos: Sequence[ShardInfo], root: Path) -> dict[str, FieldSpec]:
    first = dict(infos[0].fields)
    for info in infos[1:]:
        if dict(info.fields) != first:
            raise ShardSetError(f"{root}: {info.file} declares fields {dict(info.fields)} but {infos[0].file} declares {first}")
    return first


def finalize_manifest(
    root: str | os.PathLike[str],
    splits: Mapping[str, Sequence[str]],
    attrs: Mapping[str, Any] | None = None,
    expected_shards: int | None = None,
    verify_checksums: bool = True,
) -> Path:
    """Gather the sidecars of ``root`` and write ``manifest.json`` atomically (last step of a prep).

    Every index ``0..expected_shards-1`` must be complete (default: up to the highest shard or sidecar
    present, so a gap is reported). Refuses (naming them) missing/corrupt shards, shards with differing fields, and
    splits that leak a patient, name unknown patients or leave one out. An identical existing manifest is
    left untouched (idempotent).
    """
    root = Path(root)
    infos = _gather_sidecars(root, expected_shards, verify_checksums)
    splits = {str(name): tuple(sorted({str(p) for p in patients})) for name, patients in splits.items()}
    check_splits(splits, (p for info in infos for p in info.patient_ids), str(root))
    manifest = Manifest(root=root, schema_version=SCHEMA_VERSION, fields=_common_fields(infos, root),
                        shards=tuple(infos), splits=splits, attrs=dict(attrs or {}))
    content = manifest.to_dict()
    target = root / MANIFEST_NAME
    try:
        if json.loads(target.read_text()) == json.loads(json.dumps(content)):
            return target
    except (OSError, ValueError):
        pass
    atomic_write_json(target, content)
    return target


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Load and validate ``root/manifest.json`` (schema version, shard entries, leakage guard)."""
    root = Path(root)
    target = root / MANIFEST_NAME
    if not target.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {root}: the shard set is missing or its prep did not "
                                "finish; run the prep (all array tasks) again")
    try:
        data = json.loads(target.read_text())
        version = int(data["schema_version"])
        fields = {name: FieldSpec.from_dict(spec) for name, spec in data["fields"].items()}
        shards = tuple(ShardInfo.from_dict({**entry, "fields": data["fields"]}) for entry in data["shards"])
        splits = {str(name): tuple(str(p) for p in patients) for name, patients in data["splits"].items()}
        attrs = dict(data.get("attrs", {}))
    except (ValueError, KeyError, TypeError) as error:
        raise ShardSetError(f"{target}: malformed manifest ({error}); re-run the prep to rewrite it") from error
    if version != SCHEMA_VERSION:
        raise ShardSetError(f"{target}: schema version {version}, this ctpipe reads {SCHEMA_VERSION}; re-run the prep")
    check_splits(splits, (p for info in shards for p in info.patient_ids), str(target))
    return Manifest(root=root, schema_version=version, fields=fields, shards=shards, splits=splits, attrs=attrs)


def read_shard_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``attrs`` mapping stored in one shard file (plus ``schema_version`` and ``source_files``)."""
    with h5py.File(path, "r") as handle:
        attrs = json.loads(handle.attrs["attrs_json"])
        attrs["schema_version"] = int(handle.attrs["schema_version"])
        attrs["source_files"] = json.loads(handle.attrs["source_files_json"])
    return attrs


# ---- identity and integrity of a finished set ------------------------------------------------------------
def shard_set_identity(root: str | os.PathLike[str]) -> dict[str, Any]:
    """What a training run depends on: the manifest's checksum (it holds every shard's SHA-256), fields, splits.

    The folder's path is not part of it: a set copied elsewhere is the same data.
    """
    manifest = read_manifest(root)
    canonical = json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return {
        "manifest_sha256": hashlib.sha256(canonical).hexdigest(),
        "fields": {name: [list(spec.shape), spec.dtype] for name, spec in sorted(manifest.fields.items())},
        "splits": {name: len(patients) for name, patients in sorted(manifest.splits.items())},
        "n_samples": manifest.n_samples,
    }


@dataclass(frozen=True)
class ShardCheck:
    """The outcome of checking one shard against the manifest (``problem`` is empty when it matches)."""

    file: str
    size_bytes: int
    mtime_ns: int
    sha256: str
    problem: str = ""
    hashed: bool = False


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def check_shard(manifest: Manifest, info: ShardInfo, stamp: Mapping[str, Any] | None = None) -> ShardCheck:
    """Size, then SHA-256 of one shard against its manifest entry; a matching ``stamp`` entry (same size,
    mtime and checksum, written by an earlier check) skips the hashing."""
    path = manifest.shard_path(info)
    key = _stat_key(path)
    if key is None:
        return ShardCheck(info.file, 0, 0, "", f"{path} is missing")
    size, mtime_ns = key
    if size != info.size_bytes:
        return ShardCheck(info.file, size, mtime_ns, "", f"{path} holds {size} bytes, the manifest records "
                          f"{info.size_bytes} (truncated or replaced)")
    entry = (stamp or {}).get(info.file)
    if isinstance(entry, Mapping) and entry.get("size_bytes") == size and entry.get("mtime_ns") == mtime_ns \
            and entry.get("sha256") == info.sha256:
        return ShardCheck(info.file, size, mtime_ns, info.sha256)
    digest = sha256_file(path)
    problem = "" if digest == info.sha256 else (f"{path} is damaged: its SHA-256 is {digest[:16]}..., the manifest "
                                                f"records {info.sha256[:16]}...")
    return ShardCheck(info.file, size, mtime_ns, digest, problem, hashed=True)


def read_verify_stamp(path: str | os.PathLike[str], manifest: Manifest) -> dict[str, Any]:
    """The per-shard entries of a verification stamp written for this very manifest (else empty)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    identity = shard_set_identity(manifest.root)["manifest_sha256"]
    if not isinstance(data, dict) or data.get("manifest_sha256") != identity:
        return {}
    shards = data.get("shards", {})
    return shards if isinstance(shards, dict) else {}


def write_verify_stamp(path: str | os.PathLike[str], manifest: Manifest, checks: Sequence[ShardCheck]) -> Path:
    """Record the shards that matched, so the next check of an unchanged shard skips its hashing."""
    return atomic_write_json(path, {
        "manifest": str(manifest.root / MANIFEST_NAME),
        "manifest_sha256": shard_set_identity(manifest.root)["manifest_sha256"],
        "shards": {c.file: {"size_bytes": c.size_bytes, "mtime_ns": c.mtime_ns, "sha256": c.sha256}
                   for c in checks if not c.problem},
    })


def damaged_shards_error(manifest: Manifest, checks: Sequence[ShardCheck]) -> ShardSetError | None:
    bad = [c.problem for c in checks if c.problem]
    if not bad:
        return None
    return ShardSetError(f"shard set {manifest.root}: {len(bad)} shard(s) do not match {MANIFEST_NAME}: "
                         + "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
                         + ". Nothing was trained on them; re-run the prep to rewrite the damaged shards "
                         "(it rewrites only those) or restore them from a copy")


# ---- who owns an output folder -----------------------------------------------------------------------------
PREP_IDENTITY = "prep.json"


def _legacy_kind(attrs: Mapping[str, Any]) -> str | None:
    return attrs.get("kind") or attrs.get("dataset")


def claim_output(out: str | os.PathLike[str], prep: str, src: str | os.PathLike[str],
                 settings: Mapping[str, Any]) -> Path:
    """Make ``out`` this prep's output, or refuse: it may hold only what the same prep, from the same source
    with the same settings, wrote there (``out/prep.json`` records that; the first task creates it).

    A folder that holds anything else -- a shard set of another family, another source or other settings,
    or unrelated files -- is refused before anything in it is touched, naming what it holds.
    """
    out = Path(out)
    mine = {"prep": prep, "src": str(Path(src).resolve()),
            "settings": json.loads(json.dumps(dict(settings), sort_keys=True))}
    target = out / PREP_IDENTITY
    hint = f"choose another --out, or delete {out} first if it may be replaced"
    if out.exists() and not out.is_dir():
        raise ShardSetError(f"--out {out} is a file, not a folder; {hint}")
    if not target.is_file():
        claims = f".{PREP_IDENTITY}.claim-"  # another array task claiming the folder now (or its temporary file)
        present = sorted(p.name for p in out.iterdir() if claims not in p.name) if out.is_dir() else []
        legacy = None
        if MANIFEST_NAME in present:  # a set written before prep.json existed: accept only the same family
            try:
                legacy = _legacy_kind(json.loads((out / MANIFEST_NAME).read_text()).get("attrs", {}))
            except (OSError, ValueError, AttributeError):
                legacy = "unreadable"
        if present and legacy != prep:
            what = f"a {legacy!r} shard set" if legacy else f"files not written by this prep ({present[:5]})"
            raise ShardSetError(f"--out {out} already holds {what}; the {prep!r} prep would replace or mix into "
                                f"it; {hint}")
        out.mkdir(parents=True, exist_ok=True)
        claim = out / f".{PREP_IDENTITY}.claim-{os.getpid()}"
        with atomic_path(claim) as tmp:
            tmp.write_text(json.dumps(mine, indent=2, sort_keys=True) + "\n")
        try:
            os.link(claim, target)  # exclusive: of two tasks starting at once, one writes it
        except FileExistsError:
            pass
        finally:
            claim.unlink(missing_ok=True)
    try:
        theirs = json.loads(target.read_text())
    except (OSError, ValueError) as error:
        raise ShardSetError(f"{target} is unreadable ({error}); {hint}") from None
    if theirs != mine:
        keys = [k for k in ("prep", "src") if theirs.get(k) != mine[k]]
        settings_diff = {k: [theirs.get("settings", {}).get(k), v] for k, v in mine["settings"].items()
                         if theirs.get("settings", {}).get(k) != v}
        described = ", ".join([f"{k}: {theirs.get(k)!r} (asked: {mine[k]!r})" for k in keys]
                              + [f"{k}: {old!r} (asked: {new!r})" for k, (old, new) in settings_diff.items()])
        raise ShardSetError(f"--out {out} holds the output of another prep ({described}); nothing there was "
                            f"changed; {hint}")
    return target
