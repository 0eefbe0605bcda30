from __future__ import annotations

import hashlib
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ctpipe.data.lodopab import inspect_lodopab, prep_lodopab
from ctpipe.data.phantoms import MU_MAX, hu_to_normalised, random_patient_slices
from ctpipe.data.shards import read_manifest
from ctpipe.data.synthetic import (
    MIN_PHOTON_COUNT,
    PHOTONS_PER_PIXEL,
    SMALL_GEOMETRY,
    downsample_mean,
    project_physical,
    simulate_observation,
    write_synthetic_lodopab,
)
from ctpipe.ops.geometry import ParallelBeamGeometry
from ctpipe.ops.projector import forward_project

GEOMETRY = ParallelBeamGeometry.lodopab().scaled(24, 16)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    summary = write_synthetic_lodopab(out, 30, "small", seed=5, samples_per_file=7, geometry=GEOMETRY, progress=False)
    return out, summary


def test_raw_layout_is_lodopab(synthetic) -> None:
    out, summary = synthetic
    assert summary["samples"] == {"train": 24, "validation": 3, "test": 3}
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"{kind}_train_{i:03d}.hdf5" for kind in ("observation", "ground_truth") for i in range(4)]
                      + [f"{kind}_{part}_000.hdf5" for kind in ("observation", "ground_truth")
                         for part in ("validation", "test")]
                      + [f"patient_ids_rand_{part}.csv" for part in ("train", "validation", "test")])
    assert names == expected == summary["files"]
    for name in names:
        if not name.endswith(".hdf5"):
            continue
        with h5py.File(out / name, "r") as handle:
            assert list(handle.keys()) == ["data"]
            data = handle["data"]
            assert data.dtype == np.float32
            n = 3 if ("_validation_" in name or "_test_" in name) else (3 if name.endswith("_003.hdf5") else 7)
            shape = GEOMETRY.sinogram_shape if name.startswith("observation") else GEOMETRY.image_shape
            assert data.shape == (n, *shape)
            values = data[...]
            assert np.isfinite(values).all()
            if name.startswith("ground_truth"):
                assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.3


def test_patients_are_disjoint_ordered_and_about_eight_slices_each(synthetic) -> None:
    out, summary = synthetic
    ids = {part: [int(line) for line in (out / f"patient_ids_rand_{part}.csv").read_text().splitlines()]
           for part in ("train", "validation", "test")}
    assert {part: len(v) for part, v in ids.items()} == summary["samples"]
    assert max(ids["train"]) < min(ids["validation"]) <= max(ids["validation"]) < min(ids["test"])  # like LoDoPaB
    counts = np.unique(ids["train"], return_counts=True)[1]
    assert len(counts) == summary["patients"]["train"] == 3 and set(counts) == {8}
    assert ids["train"] != sorted(ids["train"])  # shuffled within the part, as in the real files
    for line in (out / "patient_ids_rand_train.csv").read_text().splitlines():
        assert re.fullmatch(r"\d+", line)


def test_prep_reads_synthetic_files_unchanged(synthetic, tmp_path: Path) -> None:
    out, _ = synthetic
    layout = inspect_lodopab(out)
    assert layout.geometry == GEOMETRY
    assert layout.patient_id_source["train"] == "csv patient_ids_rand_train.csv"
    prep_lodopab(out, tmp_path / "shards", progress=False)
    manifest = read_manifest(tmp_path / "shards")
    assert manifest.n_samples == 30 and len(manifest.splits["train"]) == 3


def test_deterministic_given_seed(synthetic, tmp_path: Path) -> None:
    out, _ = synthetic
    again = tmp_path / "again"
    write_synthetic_lodopab(again, 30, "small", seed=5, samples_per_file=7, geometry=GEOMETRY, progress=False)
    for path in out.iterdir():
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256((again / path.name).read_bytes()).digest()
    other = tmp_path / "other"
    write_synthetic_lodopab(other, 30, "small", seed=6, samples_per_file=7, geometry=GEOMETRY, progress=False)
    with h5py.File(out / "ground_truth_train_000.hdf5") as a, h5py.File(other / "ground_truth_train_000.hdf5") as b:
        assert not np.array_equal(a["data"][...], b["data"][...])


def test_observations_match_the_ground_truth_projection(synthetic) -> None:
    """The stored y is a noisy projection of the stored ground truth (same orientation, same units)."""
    out, _ = synthetic
    with h5py.File(out / "observation_train_001.hdf5") as obs, h5py.File(out / "ground_truth_train_001.hdf5") as gt:
        y, x = obs["data"][...], gt["data"][...]
    clean = forward_project(torch.from_numpy(x)[:, None].double(), GEOMETRY)[:, 0].numpy()
    for k in range(len(y)):
        correlation = np.corrcoef(y[k].ravel(), clean[k].ravel())[0, 1]
        assert correlation > 0.98
        assert abs(y[k].sum() / clean[k].sum() - 1.0) < 0.05
        flipped = np.corrcoef(y[k].ravel(), clean[k, :, ::-1].ravel())[0, 1]
        assert correlation > flipped


def test_noise_model_mean_and_variance_match_poisson_statistics() -> None:
    rng = np.random.default_rng(0)
    line_integrals = np.linspace(0.0, 4.0, 200)  # lambda = N0 exp(-A) >= 75 counts
    draws = np.stack([simulate_observation(line_integrals, rng) for _ in range(2000)]).astype(np.float64)
    lam = PHOTONS_PER_PIXEL * np.exp(-line_integrals)
    mean_physical = draws.mean(axis=0) * MU_MAX
    # -ln(N/N0) has bias ~ 1/(2 lam) and standard deviation ~ 1/sqrt(lam): a 5-sigma bound on the mean
    bound = 1.0 / (2.0 * lam) + 5.0 / np.sqrt(lam * draws.shape[0])
    assert np.all(np.abs(mean_physical - line_integrals) < bound)
    std_physical = draws.std(axis=0) * MU_MAX
    np.testing.assert_allclose(std_physical, 1.0 / np.sqrt(lam), rtol=0.12)


def test_noise_model_on_a_phantom_projection_and_zero_counts() -> None:
    fine_geometry = GEOMETRY.refined(2)
    phantom = random_patient_slices(np.random.default_rng(1), 1, fine_geometry.n_pixels)
    line_integrals = project_physical(phantom, fine_geometry)[0]
    expected = forward_project(torch.from_numpy(phantom[:, None] * MU_MAX), fine_geometry)[0, 0].numpy()
    np.testing.assert_allclose(line_integrals, expected, rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(2)
    mean = np.mean([simulate_observation(line_integrals, rng) for _ in range(400)], axis=0) * MU_MAX
    lam = PHOTONS_PER_PIXEL * np.exp(-line_integrals)
    reliable = lam > 50  # away from the zero-count floor the delta-method bound holds
    bound = 1.0 / (2.0 * lam) + 5.0 / np.sqrt(lam * 400)
    assert reliable.mean() > 0.9
    assert np.all(np.abs(mean - line_integrals)[reliable] < bound[reliable])
    saturated = simulate_observation(np.full(5, 40.0), rng)  # exp(-40) N0 ~ 1e-14: all counts are zero
    np.testing.assert_allclose(saturated, -np.log(MIN_PHOTON_COUNT / PHOTONS_PER_PIXEL) / MU_MAX, rtol=1e-6)


def test_downsample_mean_and_hu_mapping() -> None:
    fine = np.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_array_equal(downsample_mean(fine, 2), [[[2.5, 4.5], [10.5, 12.5]]])
    np.testing.assert_allclose(hu_to_normalised(np.array([-1000.0, 0.0, 3071.0, 5000.0])),
                               [0.02 / MU_MAX, 20.0 / MU_MAX, 1.0, 1.0], rtol=1e-5)


def test_small_geometry_constant_and_bad_arguments(tmp_path: Path) -> None:
    assert SMALL_GEOMETRY == ParallelBeamGeometry.lodopab().scaled(128, 180)
    assert SMALL_GEOMETRY.sinogram_shape == (180, 183)
    with pytest.raises(ValueError, match="size"):
        write_synthetic_lodopab(tmp_path, 10, "medium")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parts_fractions"):
        write_synthetic_lodopab(tmp_path, 10, "small", parts_fractions=(0.5, 0.5, 0.5))


def test_slices_of_one_patient_are_more_alike_than_slices_of_two() -> None:
    a = random_patient_slices(np.random.default_rng(10), 3, 48)
    b = random_patient_slices(np.random.default_rng(11), 3, 48)
    within = np.abs(a[0] - a[1]).mean()
    across = np.abs(a[0] - b[0]).mean()
    assert within < 0.6 * across
    assert not np.array_equal(a[0], a[1])
