"""What `ctpipe train` refuses about a run folder, in real processes: changed settings on a resume, a split
name the shard set lacks, a second process on the same folder, other data under a resumed run, damaged
shards; and that a refusal leaves the run folder exactly as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

TINY = ["data.batch_size=8", "train.early_stopping_patience=null", "data.num_workers=0", "train.device=cpu",
        "train.log_every=1"]


def ctpipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctpipe", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def train(run: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    return ctpipe("train", "fbp_window", "--run-dir", str(run), f"data.root={root}", *TINY, *extra)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run folder with its content (a refusal must leave all of it unchanged)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def clean_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


@pytest.fixture()
def lodopab_copy(tiny_lodopab: Path, tmp_path: Path) -> Path:
    root = tmp_path / "shards"
    shutil.copytree(tiny_lodopab, root)
    return root


@pytest.mark.slow
def test_refused_resume_changes_nothing_and_force_resume_records_the_change(tiny_lodopab, tmp_path):
    run = tmp_path / "run"
    first = train(run, tiny_lodopab, "train.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(run)
    refused = train(run, tiny_lodopab, "train.epochs=1", "optim.lr=0.5")
    message = clean_error(refused)
    assert "optim.lr" in message and "--force-resume" in message and str(run) in message
    assert snapshot(run) == before  # config.json, events.jsonl, checkpoints, history: all as they were
    again = train(run, tiny_lodopab, "train.epochs=1")  # the original command still resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.01
    forced = train(run, tiny_lodopab, "train.epochs=2", "optim.lr=0.5", "--force-resume")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.5
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    changed = [e for e in events if e["event"] == "config_changed"]
    assert len(changed) == 1 and changed[0]["changes"]["optim.lr"] == [0.01, 0.5] and changed[0]["forced"]
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2]


def test_unknown_split_name_is_refused_before_any_work(tiny_lodopab, tmp_path):
    run = tmp_path / "run"
    message = clean_error(train(run, tiny_lodopab, "train.epochs=1", "data.val_split=valid"))
    assert "data.val_split='valid'" in message and "'validation'" in message and str(tiny_lodopab) in message
    assert not run.exists()


@pytest.mark.slow
def test_resume_on_other_data_is_refused(tiny_lodopab, tmp_path):
    from ctpipe.data.lodopab import prep_lodopab
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    other = tmp_path / "other"
    write_synthetic_lodopab(other / "raw", n=48, size="small", seed=99, samples_per_file=16,
                            geometry=ParallelBeamGeometry.lodopab().scaled(32, 24), progress=False)
    prep_lodopab(other / "raw", other / "shards", progress=False)
    root, run = tmp_path / "shards", tmp_path / "run"
    shutil.copytree(tiny_lodopab, root)
    assert train(run, root, "train.epochs=1").returncode == 0
    before = snapshot(run)
    shutil.rmtree(root)
    shutil.copytree(other / "shards", root)  # same path, other data
    message = clean_error(train(run, root, "train.epochs=2"))
    assert "manifest_sha256" in message and "--force-resume" in message
    assert snapshot(run) == before
    # another path is another setting: refused by the resume check, before the data is even read
    message = clean_error(train(run, other / "shards", "train.epochs=2"))
    assert "data.root" in message
    assert snapshot(run) == before


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.slow
def test_second_process_on_a_run_folder_is_refused_and_a_killed_holder_does_not_block(tiny_lodopab, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "ctpipe", "train", "fbp_window", "--run-dir", str(run),
            f"data.root={tiny_lodopab}", *TINY, "train.epochs=100000", "train.checkpoint_interval_s=0"]
    holder = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "checkpoints" / "latest.pt", holder)
        second = train(run, tiny_lodopab, "train.epochs=100000", "train.checkpoint_interval_s=0")
        message = clean_error(second)
        assert f"pid {holder.pid}" in message and "run.lock" in message and "in use" in message
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=120) == 3  # preempted: saved and released
        assert not (run / "run.lock").exists()
        # a holder killed outright leaves its lock behind; the next start finds the pid gone and takes over
        killed = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(run / "run.lock", killed)
        time.sleep(1.0)
        killed.kill()
        killed.wait(timeout=60)
        assert (run / "run.lock").exists()
        taken = train(run, tiny_lodopab, "train.epochs=1")
        assert taken.returncode == 0, taken.stderr[-3000:]
        assert "took over the lock" in taken.stderr and "no longer exists" in taken.stderr
        assert not (run / "run.lock").exists()
    finally:
        for proc in (holder,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_lock_of_an_earlier_start_of_the_same_slurm_job_is_stale(tmp_path):
    from ctpipe.runlock import Holder, stale_reason

    me = Holder("node2", os.getpid(), "4242_3", time.time(), "b")
    requeued = Holder("node1", 12345, "4242_3", time.time() - 5, "a")
    other_job = Holder("node1", 12345, "999", time.time() - 5, "a")
    assert "earlier start of this SLURM job" in stale_reason(requeued, 5.0, me, 900.0)
    assert stale_reason(other_job, 5.0, me, 900.0) is None
    assert "last refreshed" in stale_reason(other_job, 1000.0, me, 900.0)


def test_a_fresh_lock_whose_holder_has_not_signed_it_is_refused_as_in_use(tmp_path):
    # a process stopped between creating the lock and writing its identity: refused as "in use", never taken
    from ctpipe.runlock import LOCK_NAME, RunLock, RunLockedError

    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(RunLockedError, match="has not written who it is yet"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # left to its holder


def _flip_a_data_byte(shard: Path) -> None:
    import h5py

    with h5py.File(shard, "r") as handle:
        offset = handle["image"].id.get_offset() if handle["image"].chunks is None else None
        if offset is None:
            offset = handle["image"].id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 100] ^= 0x40
    shard.write_bytes(bytes(data))


def test_damaged_shard_is_refused_before_training_and_the_check_is_stamped(lodopab_copy, tmp_path):
    from ctpipe.distributed import DistEnv
    from ctpipe.runner import resolve_config, verify_data

    run = tmp_path / "run"
    run.mkdir()
    cfg = resolve_config("fbp_window", run, [f"data.root={lodopab_copy}"])
    first = verify_data(cfg, run, DistEnv())
    assert first and all(c.hashed and not c.problem for c in first)
    again = verify_data(cfg, run, DistEnv())  # a requeue: the stamp vouches for unchanged shards
    assert again and not any(c.hashed for c in again)
    victim = sorted(lodopab_copy.glob("shard-*.h5"))[1]
    _flip_a_data_byte(victim)
    message = clean_error(train(tmp_path / "run2", lodopab_copy, "train.epochs=1"))
    assert victim.name in message and "damaged" in message and "re-run the prep" in message
    assert not (tmp_path / "run2" / "checkpoints").exists()
    with pytest.raises(Exception, match=victim.name):
        verify_data(cfg, run, DistEnv())  # the stamp does not vouch for a shard whose mtime changed
