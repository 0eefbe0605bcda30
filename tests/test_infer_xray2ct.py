"""ctpipe infer xray2ct: NIfTI shape, spacing (fov / size), centred RAS affine, HU = inverted window, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctpipe.cli import main
from ctpipe.infer_xray2ct import infer_xray2ct, load_xrays, volume_affine
from ctpipe.runner import run_stage
from ctpipe.stages import STAGES
from tests.stages.test_stage1_64 import TINY, make_xray_shards, quick_stage1


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("infer")
    shards = make_xray_shards(root, n=6)
    stage1 = quick_stage1(shards, root / "stage1")
    run_stage("refine_256", root / "refine", [f"data.root={shards}", *TINY, f"stage1_checkpoint={stage1}",
                                              "loss.scale_weights=[0.5,1.0]", "train.epochs=1",
                                              "train.max_steps_per_epoch=1", "optim.lr=1e-2"], evaluate=False)
    return shards, stage1, root / "refine" / "checkpoints" / "best.pt"


def test_stage1_output_in_hu_with_the_recorded_fov(trained, tmp_path: Path) -> None:
    shards, stage1, _ = trained
    out = tmp_path / "vol.nii.gz"
    result = infer_xray2ct(stage1, shards, out, sample_id="ct_0001")
    image = nib.load(out)
    assert image.shape == (16, 16, 16) and result.model == "stage1_64"
    source = load_xrays(shards, "ct_0001")
    assert source.fov_mm == pytest.approx(320.0)  # 32 voxels x 10 mm
    np.testing.assert_allclose(image.header.get_zooms(), (20.0, 20.0, 20.0))
    np.testing.assert_allclose(image.affine, volume_affine(16, 320.0))
    centre = image.affine @ np.array([7.5, 7.5, 7.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # cube centred on the origin
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    model = STAGES["stage1_64"].load_trained(stage1)
    with torch.no_grad():
        unit = model(torch.from_numpy(source.xray)[None])[0, 0].clamp(0, 1).numpy()
    np.testing.assert_allclose(image.get_fdata(), unit * 2500.0 - 1024.0, atol=1e-3)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_refined_output_and_npy_input_through_the_cli(trained, tmp_path: Path, capsys) -> None:
    shards, stage1, refine = trained
    xray = tmp_path / "pair.npy"
    np.save(xray, load_xrays(shards, "ct_0002").xray)
    out = tmp_path / "refined.nii"
    main(["infer", "xray2ct", "--checkpoint", str(stage1), "--xrays", str(xray), "--out", str(out),
          "--refine", str(refine), "--fov-mm", "256", "--device", "cpu", "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    image = nib.load(out)
    assert image.shape == (32, 32, 32) and printed["model"] == "refine_256"  # the grid refine was trained on
    np.testing.assert_allclose(image.header.get_zooms(), (8.0, 8.0, 8.0))
    data = image.get_fdata()
    assert data.min() >= -1024.0 - 1e-3 and data.max() <= 1476.0 + 1e-3


def test_npy_without_fov_is_refused(trained, tmp_path: Path) -> None:
    shards, stage1, _ = trained
    xray = tmp_path / "pair.npy"
    np.save(xray, np.zeros((2, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="--fov-mm"):
        infer_xray2ct(stage1, xray, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="--sample-id"):
        infer_xray2ct(stage1, shards, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match=".nii"):
        infer_xray2ct(stage1, shards, tmp_path / "x.npy", sample_id="ct_0001")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", *args], capture_output=True, text=True, timeout=600)


def test_nan_or_out_of_range_xrays_and_a_wrong_checkpoint_are_refused(trained, tmp_path: Path) -> None:
    shards, stage1, refine = trained
    good = load_xrays(shards, "ct_0002").xray
    nan, loud = good.copy(), good * 100.0
    nan[1, 3, 4] = np.nan
    cases = {"nan": (nan, stage1, ["NaN/Inf", "lateral view at row 3, column 4"]),
             "loud": (loud, stage1, ["values span", "expected [0, 1]"]),
             "wrong_stage": (good, refine, ["'refine_256' checkpoint", "--refine"])}
    for name, (array, checkpoint, fragments) in cases.items():
        np.save(tmp_path / f"{name}.npy", array)
        out = tmp_path / f"{name}.nii.gz"
        result = _cli("infer", "xray2ct", "--checkpoint", str(checkpoint), "--xrays", str(tmp_path / f"{name}.npy"),
                      "--out", str(out), "--fov-mm", "320", "--device", "cpu")
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        assert all(f in result.stderr for f in fragments), (name, result.stderr)
        assert not out.exists() and not list(tmp_path.glob(f".{name}*"))


def test_each_checkpoint_is_read_once(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage is learnt from the checkpoint and the same read view goes to the stage's loader: a full-size
    stage-1 checkpoint is 176 MiB, so reading it a second time would double the start-up I/O."""
    import ctpipe.checkpoint as checkpoint

    shards, stage1, refine = trained
    reads: list[Path] = []
    real = checkpoint.load_checkpoint

    def counting(path, *args, **kwargs):  # the real loader, counted
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counting)
    infer_xray2ct(stage1, shards, tmp_path / "vol.nii.gz", refine=refine, sample_id="ct_0001")
    assert sorted(reads) == sorted([Path(stage1), Path(refine)])
