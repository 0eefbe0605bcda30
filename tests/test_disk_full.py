"""A full disk says "no space left on <path>", leaves nothing partial and keeps the last good checkpoint: on a
real small file system (tmpfs, where this process may mount one) and with ENOSPC injected at the write call."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from ctpipe.atomic import atomic_write_bytes
from ctpipe.errors import DiskFullError


def ctpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture()
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}); the injected test covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free - leave
    with open(filler, "wb") as handle:
        try:
            handle.write(b"\0" * max(free, 0))
        except OSError:
            pass
    return filler


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob(".*") if p.is_file() and p.name != ".prep.json")


def test_injected_enospc_at_the_write_call_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    target.write_bytes(b"old")

    def failing_write(self: Path, data: bytes) -> int:
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(DiskFullError, match=f"no space left on {target}"):
        atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_prep_on_a_full_file_system(small_fs, tmp_path):
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    write_synthetic_lodopab(tmp_path / "raw", n=64, size="small", seed=1, samples_per_file=16,
                            geometry=ParallelBeamGeometry.lodopab().scaled(48, 40), progress=False)
    out = small_fs / "shards"
    result = ctpipe("prep", "lodopab", "--src", str(tmp_path / "raw"), "--out", str(out))
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])  # not a segfault
    assert "Traceback" not in result.stderr and "HDF5" not in result.stderr, result.stderr[-3000:]
    assert f"no space left on {out}" in result.stderr
    assert not leftovers(out) and not (out / "manifest.json").exists()
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_fs)], check=True)
    again = ctpipe("prep", "lodopab", "--src", str(tmp_path / "raw"), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "manifest.json").is_file()


def test_checkpoint_save_on_a_full_file_system_keeps_the_last_good_one(small_fs, tiny_lodopab):
    from ctpipe.checkpoint import load_newest

    run = small_fs / "run"
    common = ["train", "fbp_window", "--run-dir", str(run), f"data.root={tiny_lodopab}", "data.batch_size=8",
              "train.early_stopping_patience=null", "train.device=cpu"]
    first = ctpipe(*common, "train.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    good_step = load_newest(run / "checkpoints")[1]["global_step"]
    filler = fill(small_fs, leave=16384)  # room for the lock and the logs, not for a checkpoint
    full = ctpipe(*common, "train.epochs=2")
    assert full.returncode == 2, (full.returncode, full.stderr[-3000:])
    assert "Traceback" not in full.stderr and "no space left on" in full.stderr and str(run) in full.stderr
    path, state = load_newest(run / "checkpoints")
    assert state["global_step"] == good_step, path  # the last good checkpoint is still there and readable
    assert not leftovers(run / "checkpoints")
    filler.unlink()
    resumed = ctpipe(*common, "train.epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_newest(run / "checkpoints")[1]["global_step"] == 2 * good_step
    assert os.path.exists(run / "history.csv")
