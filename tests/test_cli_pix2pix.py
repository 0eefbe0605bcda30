"""`ctpipe prep synth-phases | nifti-pairs`, `ctpipe train pix2pix_phase`, `ctpipe infer pix2pix` (single volume
and folder mode) and `ctpipe aggregate` listing the pix2pix and identity rows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctpipe.cli import main
from ctpipe.data.nifti_pairs import load_volume
from ctpipe.infer_pix2pix import infer_volume
from ctpipe.stages.pix2pix_phase import load_trained_generator
from tests.threads import one_torch_thread

TINY = ["train.device=cpu", "model.num_downs=6", "model.ngf=8", "model.ndf=8", "model.n_layers_d=2",
        "data.num_workers=0", "train.epochs=1", "scheduler.n_epochs_constant=1", "train.max_steps_per_epoch=3",
        "train.log_every=100000"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthesize, prep and train a tiny run through the command line; returns the work folder."""
    work = tmp_path_factory.mktemp("cli_pix2pix")
    with one_torch_thread():
        main(["prep", "synth-phases", "--out", str(work / "src"), "--n", "6", "--size", "64", "--n-slices", "16"])
        main(["prep", "nifti-pairs", "--src", str(work / "src"), "--out", str(work / "shards"), "--size", "64",
              "--split-fractions", "0.6,0.2,0.2", "--task-index", "0", "--n-tasks", "1"])
        main(["train", "pix2pix_phase", "--run-dir", str(work / "runs" / "pix2pix_phase" / "tiny"),
              f"data.root={work / 'shards'}", *TINY])
    return work


def _checkpoint(work: Path) -> Path:
    return work / "runs" / "pix2pix_phase" / "tiny" / "checkpoints" / "best.pt"


def test_infer_single_volume_keeps_affine_header_and_shape(trained: Path, tmp_path: Path) -> None:
    src = trained / "src" / "trainA" / "patient_3.nii.gz"
    out = tmp_path / "pred" / "patient_3.nii.gz"
    main(["infer", "pix2pix", "--checkpoint", str(_checkpoint(trained)), "--input", str(src), "--out", str(out),
          "--device", "cpu"])
    a, p = nib.load(str(src)), nib.load(str(out))
    assert p.shape == a.shape == (64, 64, 16)
    assert np.array_equal(p.affine, a.affine)
    assert (p.header["sform_code"], p.header["qform_code"]) == (a.header["sform_code"], a.header["qform_code"])
    assert np.allclose(p.header.get_zooms(), a.header.get_zooms())
    data = p.get_fdata()
    assert np.isfinite(data).all() and data.min() >= -1024 and data.max() <= 3071
    # the CLI = infer_volume with the run's generator and the prep window/size recorded in the checkpoint
    model = load_trained_generator(_checkpoint(trained))
    assert (model.prep.window, model.prep.size) == ((-1024.0, 3071.0), 64)
    again = infer_volume(model.generator, src, tmp_path / "again.nii.gz", model.prep.window, model.prep.size)
    assert np.array_equal(nib.load(str(again)).get_fdata(), data)


def test_infer_folder_with_targets_writes_metrics(trained: Path, tmp_path: Path) -> None:
    main(["infer", "pix2pix", "--checkpoint", str(_checkpoint(trained)), "--input-dir", str(trained / "src" / "trainA"),
          "--out-dir", str(tmp_path / "out"), "--target-dir", str(trained / "src" / "trainB"), "--device", "cpu",
          "--data-root", str(trained / "shards")])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == [f"patient_{k}.nii.gz" for k in range(6)]
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert len(table) == 6 and {"psnr_hu[range=4095]", "identity_psnr_hu[range=4095]"} <= set(table.columns)
    assert load_volume(tmp_path / "out" / "patient_0.nii.gz").data.shape == (64, 64, 16)


def test_infer_rejects_mixed_modes(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "pix2pix", "--checkpoint", str(_checkpoint(trained)), "--input", "a.nii.gz", "--out", "b.nii.gz",
              "--input-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "either --input" in capsys.readouterr().err


def test_aggregate_lists_pix2pix_and_identity(trained: Path, tmp_path: Path) -> None:
    main(["aggregate", "--runs", str(trained / "runs"), "--out", str(tmp_path / "results")])
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    rows = summary[summary["stage"] == "pix2pix_phase"]
    expected = {(m, s) for m in ("pix2pix", "identity") for s in ("validation", "test")}
    assert set(zip(rows["model"], rows["split"])) == expected
    assert set(rows.loc[rows["model"] == "identity", "experiment"]) == {"baseline"}
    assert (rows["n_samples"] == 1).all()  # one row per VOLUME (one patient per split here)
    assert rows["psnr_hu[range=4095]"].notna().all() and rows["mae_hu"].notna().all()


@pytest.mark.parametrize("flag", [["--hu-window", "-1000,2000"], ["--hu-window=-1000,2000"],
                                  ["--hu-window", "-1000", "2000"]])
def test_prep_hu_window_flag_forms(flag: list[str], tmp_path: Path) -> None:
    """The issue's spelling `--hu-window -1024,3071` (a value argparse alone would take for an option)."""
    from ctpipe.data.nifti_pairs import prep_settings
    from ctpipe.data.shards import read_manifest

    main(["prep", "synth-phases", "--out", str(tmp_path / "src"), "--n", "1", "--size", "16", "--n-slices", "2"])
    main(["prep", "nifti-pairs", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--size", "16",
          *flag])
    assert prep_settings(read_manifest(tmp_path / "out").attrs) == ((-1000.0, 2000.0), 16)


@pytest.mark.parametrize("value, message", [("2000,-1000", "HIGH must be greater than LOW"),
                                            ("-1000,x", "give two numbers"), ("-1,2,3", "give two numbers")])
def test_prep_rejects_a_bad_hu_window(value: str, message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prep", "nifti-pairs", "--src", str(tmp_path), "--out", str(tmp_path / "out"), "--hu-window", value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", *args], capture_output=True, text=True, timeout=600)


def test_infer_refuses_an_output_that_would_replace_an_input(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(trained / "src" / "trainA", folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    victim = folder / "patient_1.nii.gz"
    (tmp_path / "link.nii.gz").symlink_to(victim)
    checkpoint = str(_checkpoint(trained))
    for args in (["--input", str(victim), "--out", str(victim)],
                 ["--input", str(victim), "--out", str(tmp_path / "link.nii.gz")],
                 ["--input-dir", str(folder), "--out-dir", str(folder)],
                 ["--input-dir", str(trained / "src" / "trainB"), "--out-dir", str(folder), "--target-dir", str(folder)]):
        result = _cli("infer", "pix2pix", "--checkpoint", checkpoint, *args, "--device", "cpu")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "would overwrite" in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_infer_refuses_a_ct_that_is_not_in_hu(trained: Path, tmp_path: Path) -> None:
    image = nib.load(str(trained / "src" / "trainA" / "patient_0.nii.gz"))
    hu = image.get_fdata(dtype=np.float32)
    folder = tmp_path / "in"
    folder.mkdir()
    unit = (hu - hu.min()) / (hu.max() - hu.min())  # normalised to [0, 1]: the outputs would come out constant
    nib.save(nib.Nifti1Image(unit, image.affine), str(folder / "normalised.nii.gz"))
    nib.save(nib.Nifti1Image(hu, image.affine), str(folder / "fine.nii.gz"))
    (folder / "readme.txt").write_text("not a volume")
    (folder / "moved.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    result = _cli("infer", "pix2pix", "--checkpoint", str(_checkpoint(trained)), "--input",
                  str(folder / "normalised.nii.gz"), "--out", str(tmp_path / "o.nii.gz"), "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "normalised.nii.gz" in result.stderr and "values span [0, 1]" in result.stderr
    assert not (tmp_path / "o.nii.gz").exists()
    batch = _cli("infer", "pix2pix", "--checkpoint", str(_checkpoint(trained)), "--input-dir", str(folder),
                 "--out-dir", str(tmp_path / "out"), "--device", "cpu")
    assert batch.returncode == 0, batch.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["fine.nii.gz"]
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv").set_index("input")["reason"]
    assert sorted(Path(p).name for p in skipped.index) == ["moved.nii.gz", "normalised.nii.gz", "readme.txt"]
    assert "not HU" in skipped[str(folder / "normalised.nii.gz")]
    assert "broken symbolic link" in skipped[str(folder / "moved.nii.gz")]
