"""Volume inference: output geometry = input geometry, orientation round trip, metrics in HU."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ctpipe.data.synthetic_phases import write_synthetic_phases
from ctpipe.infer_pix2pix import evaluate_volume, infer_folder, infer_volume
from ctpipe.intensity import PIX2PIX_HU_WINDOW, hu_to_symmetric_unit
from ctpipe.models.pix2pix import UNetGenerator, UNetGeneratorConfig


class AddRamp(nn.Module):
    """A known map: adds 0.01 per row along slice axis 0 (the canonical R axis)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[-2], dtype=x.dtype, device=x.device)[:, None]
        return x + 0.01 * rows


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    write_synthetic_phases(tmp_path / "src", 2, size=24, n_slices=4)
    return tmp_path / "src"


def test_output_has_input_affine_header_and_shape(src: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = UNetGenerator(UNetGeneratorConfig(num_downs=5, ngf=4)).train()
    in_path = src / "trainA" / "patient_0.nii.gz"
    out = infer_volume(g, in_path, tmp_path / "pred" / "p0.nii.gz", PIX2PIX_HU_WINDOW, size=32, device="cpu",
                       batch_size=3)
    assert g.training  # mode restored
    a, p = nib.load(str(in_path)), nib.load(str(out))
    assert p.shape == a.shape == (24, 24, 4)
    assert np.array_equal(p.affine, a.affine)
    assert p.header["sform_code"] == a.header["sform_code"] and p.header["qform_code"] == a.header["qform_code"]
    assert np.allclose(p.header.get_zooms(), a.header.get_zooms())
    assert p.get_data_dtype() == np.float32
    data = p.get_fdata()
    assert np.isfinite(data).all() and data.min() >= -1024 and data.max() <= 3071
    assert not [f for f in out.parent.iterdir() if f.name.startswith(".")]  # atomic: no temp files left


def test_identity_generator_reproduces_the_input(src: Path, tmp_path: Path) -> None:
    in_path = src / "trainA" / "patient_1.nii.gz"
    out = infer_volume(nn.Identity(), in_path, tmp_path / "id.nii.gz", PIX2PIX_HU_WINDOW, size=None, device="cpu")
    expected = np.clip(nib.load(str(in_path)).get_fdata(), -1024, 3071)
    assert np.max(np.abs(nib.load(str(out)).get_fdata() - expected)) < 0.01


def test_orientation_is_restored_in_world_coordinates(src: Path, tmp_path: Path) -> None:
    in_path = src / "trainA" / "patient_0.nii.gz"  # LPS storage: array axis 0 points to the Left
    out = infer_volume(AddRamp(), in_path, tmp_path / "ramp.nii.gz", PIX2PIX_HU_WINDOW, size=None, device="cpu")
    a, p = nib.load(str(in_path)), nib.load(str(out))
    window = PIX2PIX_HU_WINDOW
    added = hu_to_symmetric_unit(p.get_fdata(), window) - hu_to_symmetric_unit(a.get_fdata(), window)
    keep = a.get_fdata() < 2000  # the ramp (at most 0.23 = 470 HU here) does not hit the window's top
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in a.shape], indexing="ij"), -1).reshape(-1, 3)
    world_x = (ijk @ a.affine[:3, :3].T + a.affine[:3, 3])[:, 0].reshape(a.shape)  # RAS x: towards Right
    spacing = abs(a.affine[0, 0])
    rank_from_right_min = (world_x - world_x.min()) / spacing
    assert np.allclose(added[keep], 0.01 * rank_from_right_min[keep], atol=1e-4)


def test_infer_folder_scores_model_and_identity(src: Path, tmp_path: Path) -> None:
    result = infer_folder(nn.Identity(), src / "trainA", tmp_path / "pred", PIX2PIX_HU_WINDOW, size=None,
                          device="cpu", target_dir=src / "trainB")
    assert [p.name for p in result.outputs] == ["patient_0.nii.gz", "patient_1.nii.gz"]
    assert result.metrics_csv is not None and result.metrics_csv.is_file()
    table = result.table
    assert table is not None and len(table) == 2
    # an identity generator is the identity baseline (up to float32 storage)
    assert np.allclose(table["psnr_hu[range=4095]"], table["identity_psnr_hu[range=4095]"], atol=1e-3)
    assert (table["identity_mae_hu"] > 0).all()


def test_evaluate_volume_known_values() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(-900, 1500, size=(3, 16, 16))
    same = evaluate_volume(target, target, PIX2PIX_HU_WINDOW)
    assert same["psnr_hu[range=4095]"] == float("inf") and same["mae_hu"] == 0.0
    assert same["ssim2d_hu[range=4095]"] == pytest.approx(1.0)
    shifted = evaluate_volume(target + 20.0, target, PIX2PIX_HU_WINDOW, input_hu=target - 40.0)
    assert shifted["mae_hu"] == pytest.approx(20.0)
    assert shifted["mae_norm"] == pytest.approx(20.0 / 4095)
    assert shifted["psnr_hu[range=4095]"] == pytest.approx(20 * np.log10(4095 / 20.0))
    assert shifted["psnr_norm[range=1]"] == pytest.approx(shifted["psnr_hu[range=4095]"])
    assert shifted["identity_mae_hu"] == pytest.approx(40.0)
    assert shifted["identity_psnr_hu[range=4095]"] == pytest.approx(20 * np.log10(4095 / 40.0))
    # values outside the window are clipped first: an error only outside the window is invisible
    outside = evaluate_volume(np.full((1, 12, 12), 5000.0), np.full((1, 12, 12), 3071.0), PIX2PIX_HU_WINDOW)
    assert outside["mae_hu"] == 0.0
    with pytest.raises(ValueError, match="must be equal"):
        evaluate_volume(target, target[:2], PIX2PIX_HU_WINDOW)


def test_evaluate_volume_ssim_matches_skimage() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    target = rng.uniform(-1000, 2000, size=(2, 20, 20))
    pred = target + rng.normal(0, 150, size=target.shape)
    scores = evaluate_volume(pred, target, PIX2PIX_HU_WINDOW)
    lo, hi = PIX2PIX_HU_WINDOW
    norm = lambda v: (np.clip(v, lo, hi) - lo) / (hi - lo)  # noqa: E731
    expected = np.mean([structural_similarity(norm(pred[k]), norm(target[k]), data_range=1.0, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False) for k in range(2)])
    assert scores["ssim2d_norm[range=1]"] == pytest.approx(expected, rel=1e-6)
    assert scores["ssim2d_hu[range=4095]"] == pytest.approx(expected, rel=1e-6)


def test_a_bad_input_names_the_file_and_a_batch_skips_it(src: Path, tmp_path: Path) -> None:
    from ctpipe.data.nifti_pairs import VolumeError

    bad = src / "trainA" / "patient_2.nii.gz"
    blob = (src / "trainA" / "patient_0.nii.gz").read_bytes()
    bad.write_bytes(blob[: len(blob) - 3])  # cut inside the gzip trailer
    with pytest.raises(VolumeError, match="patient_2.nii.gz: unreadable or truncated"):
        infer_volume(nn.Identity(), bad, tmp_path / "one.nii.gz", PIX2PIX_HU_WINDOW, size=None, device="cpu")
    assert not (tmp_path / "one.nii.gz").exists()
    # the target of patient_1 is unusable: its prediction is written, its metrics row is not
    (src / "trainB" / "patient_1.nii.gz").write_bytes(b"not a volume")
    result = infer_folder(nn.Identity(), src / "trainA", tmp_path / "pred", PIX2PIX_HU_WINDOW, size=None,
                          device="cpu", target_dir=src / "trainB")
    assert [p.name for p in result.outputs] == ["patient_0.nii.gz", "patient_1.nii.gz"]
    assert [(p.name, reason.split(":")[0]) for p, reason in result.skipped] == [
        ("patient_1.nii.gz", f"target {src / 'trainB' / 'patient_1.nii.gz'}"), ("patient_2.nii.gz", "input")]
    assert result.table is not None and result.table["patient_id"].tolist() == ["patient_0"]
    assert result.skipped_csv is not None
    assert sorted(pd.read_csv(result.skipped_csv)["input"].map(lambda p: Path(p).name)) == [
        "patient_1.nii.gz", "patient_2.nii.gz"]
    for p in (src / "trainA").glob("patient_[01].nii.gz"):
        p.write_bytes(b"")
    with pytest.raises(ValueError, match="no volume"):
        infer_folder(nn.Identity(), src / "trainA", tmp_path / "pred2", PIX2PIX_HU_WINDOW, size=None, device="cpu")
