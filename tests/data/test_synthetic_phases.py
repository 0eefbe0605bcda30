"""Synthetic phase pairs: layout, determinism, geometry, averaging, partial volume and a beating heart."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctpipe.data.synthetic_phases import (BLOOD_HU, NOISE_SIGMA_HU, TISSUE_HU,
                                          _draw_patient, clean_phase, heart_geometry, phase_grid, phase_hu,
                                          synthetic_phase_volumes, write_synthetic_phases)


def test_layout_names_and_header(tmp_path: Path) -> None:
    pairs = write_synthetic_phases(tmp_path, 2, size=32, n_slices=8)
    assert [(a.relative_to(tmp_path).as_posix(), b.relative_to(tmp_path).as_posix()) for a, b in pairs] == [
        ("trainA/patient_0.nii.gz", "trainB/patient_0.nii.gz"), ("trainA/patient_1.nii.gz", "trainB/patient_1.nii.gz")]
    a, b = nib.load(str(pairs[0][0])), nib.load(str(pairs[0][1]))
    assert a.shape == b.shape == (32, 32, 8)
    assert np.allclose(a.affine, b.affine)
    assert np.allclose(a.header.get_zooms(), (10.0, 10.0, 20.0))  # 320 mm FOV, 160 mm coverage
    assert nib.aff2axcodes(a.affine) == ("L", "P", "S")
    assert a.header.get_xyzt_units()[0] == "mm"
    data = np.asarray(a.dataobj)
    assert data.dtype == np.int16 and data.min() >= -1024 and data.max() <= 3071
    assert data[0, 0, 0] == pytest.approx(-1000, abs=60)  # a corner is air
    write_synthetic_phases(tmp_path, 1, size=16, n_slices=2, subset="test")
    assert (tmp_path / "testA" / "test_patient_0.nii.gz").is_file()
    assert (tmp_path / "testB" / "test_patient_0.nii.gz").is_file()


def test_test_subset_holds_other_patients(tmp_path: Path) -> None:
    """Test patient K is neither named nor drawn like training patient K (prep refuses an id in both)."""
    train = write_synthetic_phases(tmp_path, 2, size=16, n_slices=2)
    test = write_synthetic_phases(tmp_path, 2, size=16, n_slices=2, subset="test")
    assert {a.name for a, _ in train}.isdisjoint({a.name for a, _ in test})
    for (train_a, _), (test_a, _) in zip(train, test):
        assert not np.array_equal(np.asarray(nib.load(str(train_a)).dataobj), np.asarray(nib.load(str(test_a)).dataobj))


def test_deterministic_and_seed_dependent() -> None:
    first = synthetic_phase_volumes(3, size=32, n_slices=4, seed=7)
    again = synthetic_phase_volumes(3, size=32, n_slices=4, seed=7)
    other = synthetic_phase_volumes(3, size=32, n_slices=4, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_single_phase_input_equals_target() -> None:
    average, phase0, _ = synthetic_phase_volumes(0, size=32, n_slices=4, n_phases=1)
    assert np.array_equal(average, phase0)


def test_average_reduces_noise_and_differs_at_the_heart() -> None:
    n_phases = 10
    average, phase0, affine = synthetic_phase_volumes(0, size=64, n_slices=8, n_phases=n_phases)
    shape, grid_affine = phase_grid(64, 8)
    assert np.array_equal(affine, grid_affine) and average.shape == shape
    patient = _draw_patient(np.random.default_rng([0, 0]))  # the same draw synthetic_phase_volumes makes first
    clean = np.stack([clean_phase(patient, affine, shape, p / n_phases) for p in range(n_phases)])
    assert np.abs(phase0 - clean[0]).mean() == pytest.approx(NOISE_SIGMA_HU * np.sqrt(2 / np.pi), rel=0.1)
    # where every phase is soft tissue, the input is the average of n independent noisy copies
    static = np.all(clean == TISSUE_HU, axis=0)
    assert static.sum() > 3000
    assert np.std(phase0[static]) == pytest.approx(NOISE_SIGMA_HU, rel=0.1)
    assert np.std(average[static]) == pytest.approx(np.sqrt(NOISE_SIGMA_HU**2 / n_phases + 1 / 12), rel=0.1)
    # input = time average: it equals the mean of the clean phases up to that noise
    assert np.abs(average - clean.mean(0)).mean() < 4.0
    # the phases differ only around the heart, and there by far more than the noise
    moving = np.any(clean != clean[0], axis=0)
    assert 0.02 < moving.mean() < 0.2
    assert np.abs(average - phase0)[moving].mean() > 4 * np.abs(average - phase0)[~moving].mean()


def test_voxels_integrate_sub_voxel_samples() -> None:
    """oversample=1 is point sampling at voxel centres; the default averages 2^3 samples per voxel, so the
    heart's border holds partial-volume values between its neighbours' HU, and interiors stay exact."""
    patient = _draw_patient(np.random.default_rng([0, 0]))
    shape, affine = phase_grid(32, 8)
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), 0).reshape(3, -1)
    x, y, z = affine[:3, :3] @ ijk + affine[:3, 3:4]
    points = phase_hu(x, y, z, patient, 0.0).reshape(shape)
    assert np.array_equal(clean_phase(patient, affine, shape, 0.0, oversample=1), points)
    smooth = clean_phase(patient, affine, shape, 0.0)
    classes = np.unique(points)
    mixed = np.min(np.abs(smooth[..., None] - classes), axis=-1) > 1.0
    assert 0.01 < mixed.mean() < 0.3
    assert smooth.min() >= -1000 and smooth.max() <= 700  # within the phantom's HU range
    interior = np.all(points[None] == np.stack([np.roll(points, s, a) for a in (0, 1, 2) for s in (-1, 1)]), 0)
    assert np.array_equal(smooth[interior], points[interior])


def test_heart_motion_is_physiological() -> None:
    """Ejection fractions 55-77 % (blood-pool volume, end-diastole vs end-systole), the long axis shortens
    with the apex fixed, and the heart shifts a few millimetres in-plane."""
    for index in range(20):
        patient = _draw_patient(np.random.default_rng([0, index]))
        (c_ed, outer_ed, pool_ed), (c_es, outer_es, pool_es) = (heart_geometry(patient, t) for t in (0.0, 0.5))
        ef = 1.0 - np.prod(pool_es) / np.prod(pool_ed)
        assert 0.55 < ef < 0.77, (index, ef)
        assert outer_es[2] < outer_ed[2]
        assert c_ed[2] - outer_ed[2] == pytest.approx(c_es[2] - outer_es[2])  # apex stays put
        c_mid = heart_geometry(patient, 0.25)[0]
        assert 4.0 < np.hypot(c_mid[0] - c_ed[0], c_mid[1] - c_ed[1]) < 12.0


def test_heart_beats_across_phases() -> None:
    patient = _draw_patient(np.random.default_rng([0, 0]))
    grid = np.meshgrid(np.linspace(-160, 160, 64), np.linspace(-160, 160, 64), np.linspace(-80, 80, 16), indexing="ij")
    blood = [int((phase_hu(*grid, patient, t) == BLOOD_HU).sum()) for t in (0.0, 0.25, 0.5)]
    assert blood[0] > blood[1] > blood[2] > 0  # largest at phase 0 (end-diastole), smallest at half cycle


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        write_synthetic_phases("/nonexistent", 1, size=4)
    with pytest.raises(ValueError, match="subset"):
        write_synthetic_phases("/nonexistent", 1, subset="val")
    with pytest.raises(ValueError, match="oversample"):
        write_synthetic_phases("/nonexistent", 1, oversample=0)
