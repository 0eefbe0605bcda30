"""read_nifti: a .nii.gz missing any of its bytes (even only the gzip trailer) is rejected; intact NIfTI-1,
NIfTI-2 and big-endian files read exactly as nibabel reads them."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctpipe.data.nifti_io import NotNiftiError, read_nifti


@pytest.fixture()
def volume() -> tuple[np.ndarray, np.ndarray]:
    data = (np.random.default_rng(0).normal(size=(12, 10, 6)) * 300).astype(np.int16)
    affine = np.array([[-0.7, 0, 0, 90], [0, -0.7, 0, 80], [0, 0, 2.5, -40], [0, 0, 0, 1]])
    return data, affine


def _saved(path: Path, image: nib.Nifti1Image) -> Path:
    nib.save(image, str(path))
    return path


def test_intact_files_read_like_nibabel(volume: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    data, affine = volume
    one = nib.Nifti1Image(data, affine)
    one.header.set_slope_inter(2.0, -1024.0)  # scaled integers, as scanners store HU
    two = nib.Nifti2Image(data.astype(np.float32), affine)
    for name, image in (("n1.nii.gz", one), ("n1.nii", one), ("n2.nii.gz", two)):
        path = _saved(tmp_path / name, image)
        got, ref = read_nifti(path), nib.load(str(path))
        assert type(got) is type(ref), name
        assert np.array_equal(got.get_fdata(dtype=np.float32), ref.get_fdata(dtype=np.float32)), name
        assert np.allclose(got.affine, affine), name
    assert np.array_equal(read_nifti(tmp_path / "n1.nii.gz").get_fdata(), data * 2.0 - 1024.0)


def test_big_endian_file_reads(volume: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    data, affine = volume
    header = nib.Nifti1Header(endianness=">")
    path = _saved(tmp_path / "be.nii.gz", nib.Nifti1Image(data.astype(">i2"), affine, header=header))
    with gzip.open(path) as handle:
        assert int.from_bytes(handle.read(4), "big") == 348  # really stored big-endian
    assert np.array_equal(read_nifti(path).get_fdata(), data.astype(float))


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 40])
def test_truncated_gzip_is_rejected_even_when_only_the_trailer_is_gone(
        volume: tuple[np.ndarray, np.ndarray], tmp_path: Path, cut: int) -> None:
    data, affine = volume
    path = _saved(tmp_path / "v.nii.gz", nib.Nifti1Image(data, affine))
    path.write_bytes(path.read_bytes()[:-cut])
    if cut <= 8:  # the voxels are all there: nibabel alone does not notice (why read_nifti exists)
        assert np.array_equal(nib.load(str(path)).get_fdata(), data.astype(float))
    with pytest.raises(EOFError):
        read_nifti(path)


def test_not_nifti_inside_gzip_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello, this is not an image" * 20))
    with pytest.raises(NotNiftiError, match="348 or 540"):
        read_nifti(tmp_path / "text.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(NotNiftiError, match="empty"):
        read_nifti(tmp_path / "empty.nii.gz")
    (tmp_path / "plain.nii.gz").write_bytes(b"\x00" * 400)  # not gzip at all
    with pytest.raises(gzip.BadGzipFile):
        read_nifti(tmp_path / "plain.nii.gz")
