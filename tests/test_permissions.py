"""Output files get the permissions a plain write would give them under the process umask (not 0600), so a
shared project folder stays readable by the group when the umask says so."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

PREP = """
import os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
from ctpipe.data.lodopab import prep_lodopab
from ctpipe.data.synthetic import write_synthetic_lodopab
from ctpipe.ops.geometry import ParallelBeamGeometry
root = Path(sys.argv[1])
write_synthetic_lodopab(root / "raw", n=24, size="small", seed=3, samples_per_file=8,
                        geometry=ParallelBeamGeometry.lodopab().scaled(16, 12), progress=False)
prep_lodopab(root / "raw", root / "shards", progress=False)
"""


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from ctpipe.atomic import atomic_write_text; "
            "atomic_write_text(sys.argv[1], 'x')")
    target = tmp_path / "a.txt"
    subprocess.run([sys.executable, "-c", code, str(target), oct(umask)], check=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    from ctpipe.atomic import atomic_write_text

    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "new"


@pytest.mark.slow
def test_prep_and_train_outputs_are_group_readable_under_umask_002(tmp_path):
    subprocess.run([sys.executable, "-c", PREP, str(tmp_path), "002"], check=True, capture_output=True)
    prepped = modes(tmp_path / "shards")
    assert prepped and all(mode == 0o664 for mode in prepped.values()), prepped
    run = tmp_path / "run"
    result = subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$@"', "sh", sys.executable, "-m", "ctpipe", "train", "fbp_window",
         "--run-dir", str(run), f"data.root={tmp_path / 'shards'}", "data.batch_size=8", "train.epochs=1",
         "train.device=cpu"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = modes(run)
    assert {"config.json", "history.csv", "checkpoints/latest.pt", "checkpoints/best.pt"} <= set(written)
    assert all(mode == 0o640 for mode in written.values()), written
