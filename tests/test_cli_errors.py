"""Each class of user error ends in one message naming the option or file, the problem and the fix, and exit
code 2 -- never a traceback -- in a real `ctpipe` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctpipe.data.shards import read_manifest, sha256_file


def ctpipe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def clean(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])


@pytest.fixture(scope="module")
def phase_set(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("phases")
    assert ctpipe("prep", "synth-phases", "--out", str(work / "src"), "--n", "3", "--size", "16", "--n-slices", "2",
                  "--oversample", "1").returncode == 0
    assert ctpipe("prep", "nifti-pairs", "--src", str(work / "src"), "--out", str(work / "shards"),
                  "--size", "16").returncode == 0
    return work / "shards"


@pytest.mark.parametrize("override, fragments", [
    ("data.batch_size=0", ["data.batch_size=0 must be at least 1"]),
    ("data.eval_batch_size=-2", ["data.eval_batch_size=-2 must be at least 1"]),
    ("train.grad_accum=0", ["train.grad_accum=0 must be at least 1"]),
    ("data.num_workers=-1", ["data.num_workers=-1 must not be negative"]),
])
def test_a_count_below_its_minimum_names_the_key(tiny_lodopab, tmp_path, override, fragments):
    clean(ctpipe("train", "fbp_window", "--run-dir", str(tmp_path / "r"), f"data.root={tiny_lodopab}", override),
          *fragments)
    assert not (tmp_path / "r").exists()


def test_config_that_is_a_folder_and_run_dir_that_is_a_file(tiny_lodopab, tmp_path):
    clean(ctpipe("train", "fbp_window", "--run-dir", str(tmp_path / "r"), "--config", str(tmp_path)),
          str(tmp_path), "is a folder")
    (tmp_path / "afile").write_text("x")
    clean(ctpipe("train", "fbp_window", "--run-dir", str(tmp_path / "afile"), f"data.root={tiny_lodopab}"),
          f"--run-dir {tmp_path / 'afile'} is a file")
    assert (tmp_path / "afile").read_text() == "x"


def test_a_shard_set_of_another_family_names_its_path(tiny_lodopab, phase_set, tmp_path):
    clean(ctpipe("train", "fbp_window", "--run-dir", str(tmp_path / "a"), f"data.root={phase_set}"),
          str(phase_set), "'nifti_pairs' shard set", "ctpipe prep lodopab")
    clean(ctpipe("train", "pix2pix_phase", "--run-dir", str(tmp_path / "b"), f"data.root={tiny_lodopab}"),
          str(tiny_lodopab), "'lodopab' shard set", "ctpipe prep nifti-pairs")
    clean(ctpipe("train", "stage1_64", "--run-dir", str(tmp_path / "c"), f"data.root={tiny_lodopab}"),
          str(tiny_lodopab), "ctpipe prep drr")


def test_a_non_finite_sample_names_the_shard_and_the_sample(tiny_lodopab, tmp_path):
    import shutil

    root = tmp_path / "shards"
    shutil.copytree(tiny_lodopab, root)
    manifest = read_manifest(root)
    info = manifest.shards[0]
    shard = root / info.file
    with h5py.File(shard, "r+") as handle:  # NaN written by some other tool, with a matching manifest
        sample_id = handle["sample_id"].asstr()[2]
        image = handle["image"][2]
        image[5, 5] = np.nan
        handle["image"][2] = image
    data = json.loads((root / "manifest.json").read_text())
    data["shards"][0].update(sha256=sha256_file(shard), size_bytes=shard.stat().st_size)
    (root / "manifest.json").write_text(json.dumps(data))
    result = ctpipe("train", "fbp_window", "--run-dir", str(tmp_path / "r"), f"data.root={root}", "train.epochs=1",
                    "data.batch_size=8", "train.device=cpu", "data.num_workers=0")
    clean(result, str(shard), repr(sample_id), "NaN/Inf")


def test_an_error_raised_in_a_dataloader_worker_keeps_its_one_line_message(tmp_path):
    from ctpipe.cli import user_message
    from ctpipe.data.shards import ShardSetError

    def worker_error() -> ShardSetError:  # how torch re-raises an error of a DataLoader worker
        from torch._utils import ExceptionWrapper

        try:
            raise ShardSetError("shard x.h5, sample 'a': field 'image' holds 1 NaN/Inf values")
        except ShardSetError:
            wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
        try:
            wrapped.reraise()
        except ShardSetError as error:
            return error
        raise AssertionError("not re-raised")

    assert user_message(worker_error()) == "shard x.h5, sample 'a': field 'image' holds 1 NaN/Inf values"


def test_a_diverging_run_names_the_step_and_how_to_go_on(tiny_lodopab, tmp_path):
    result = ctpipe("train", "fbp_window", "--run-dir", str(tmp_path / "r"), f"data.root={tiny_lodopab}",
                    "data.batch_size=8", "train.device=cpu", "optim.lr=1e30", "train.epochs=2")
    clean(result, "non-finite loss", "epoch 1, step", "--force-resume", str(tmp_path / "r"))
