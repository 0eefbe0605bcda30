import nibabel as nib
import numpy as np
import pytest

from ctpipe.data.synthetic_ct import LUNG_HU, synthetic_ct_volume, write_synthetic_ct


def test_files_are_valid_nifti_in_hu_with_the_given_spacing(tmp_path):
    paths = write_synthetic_ct(tmp_path, 2, size=32, spacing_mm=(10.0, 10.0, 12.0))
    assert [p.name for p in paths] == ["ct_0000.nii.gz", "ct_0001.nii.gz"]
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers
    image = nib.load(paths[0])
    assert image.shape == (32, 32, 32)
    assert image.header.get_zooms() == pytest.approx((10.0, 10.0, 12.0))
    assert image.header.get_xyzt_units()[0] == "mm"
    assert int(image.header["sform_code"]) == 1
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # stored like DICOM-derived files
    hu = np.asarray(image.dataobj)
    assert hu.dtype == np.int16
    assert hu[0, 0].mean() < -900  # air in the corner
    assert ((hu > LUNG_HU - 100) & (hu < LUNG_HU + 100)).sum() > 100  # lungs present
    assert hu.max() > 500  # bone


def test_deterministic_per_seed(tmp_path):
    first = write_synthetic_ct(tmp_path / "a", 2, size=24, seed=3)
    second = write_synthetic_ct(tmp_path / "b", 2, size=24, seed=3)
    other = write_synthetic_ct(tmp_path / "c", 2, size=24, seed=4)
    for a, b, c in zip(first, second, other):
        assert np.array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata())
        assert np.array_equal(nib.load(a).affine, nib.load(b).affine)
        assert not np.array_equal(nib.load(a).get_fdata(), nib.load(c).get_fdata())
    assert not np.array_equal(nib.load(first[0]).get_fdata(), nib.load(first[1]).get_fdata())  # patients differ


def test_storage_order_does_not_change_the_world_image():
    lps, lps_affine = synthetic_ct_volume(2, (24, 24, 20), (12.0, 12.0, 14.0), seed=1, lps=True)
    ras, ras_affine = synthetic_ct_volume(2, (24, 24, 20), (12.0, 12.0, 14.0), seed=1, lps=False)
    assert np.array_equal(lps, ras[::-1, ::-1])
    canonical = nib.as_closest_canonical(nib.Nifti1Image(lps, lps_affine))
    assert np.array_equal(np.asarray(canonical.dataobj), ras)
    assert np.allclose(canonical.affine, ras_affine)


def test_heart_sits_on_the_patients_left():
    hu, affine = synthetic_ct_volume(0, (48, 48, 48), (320 / 48,) * 3, seed=0, lps=False)  # RAS storage
    body = hu > -500
    mid = 24
    # soft tissue inside the chest: more of it on the left (x < 0, low index) than on the right at heart level
    chest = body[:, :, mid - 6 : mid] & (hu[:, :, mid - 6 : mid] > -200) & (hu[:, :, mid - 6 : mid] < 200)
    assert chest[: mid - 4].sum() > chest[mid + 4 :].sum() * 1.1


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        write_synthetic_ct(tmp_path, 1, size=4)
    with pytest.raises(ValueError, match="spacing_mm"):
        write_synthetic_ct(tmp_path, 1, size=16, spacing_mm=(1.0, 2.0))
