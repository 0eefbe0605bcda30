"""Real signals against real processes: SIGUSR2 at three random steps (one mid-epoch) and one SIGKILL;
the resumed run must end bit-identical (weights and history.csv) to an uninterrupted one, with 1 and 2 ranks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctpipe.checkpoint import LATEST, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = {1: 12, 2: 6}  # 48 samples, batch 4, per rank
EPOCHS = 4


def command(run_dir: Path, ranks: int, sleep: float) -> list[str]:
    driver = ["-m", "tests.toy_train_driver", str(run_dir), str(sleep)]
    if ranks == 1:
        return [sys.executable, *driver]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
            str(29500 + os.getpid() % 2000), *driver]


def run_until(run_dir: Path, ranks: int, stop_at: int | None, sig: int | None) -> str:
    """Start a (resuming) run; when rank 0 reports step ``stop_at``, send ``sig`` to all ranks.

    Returns the status the ranks printed ("completed", "preempted"), or "killed"."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(run_dir, ranks, 0.02 if sig else 0.0), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    sent = False
    statuses = set()
    for line in proc.stdout:
        parts = line.split()
        if parts[:1] == ["STATUS"]:
            statuses.add(parts[1])
        if sig and not sent and parts[:1] == ["STEP"] and int(parts[1]) >= stop_at and parts[2] == "0":
            if sig == signal.SIGKILL:
                for pid in [proc.pid, *_descendants(proc.pid)]:  # the whole job dies, as on a node failure
                    _kill(pid)
            else:
                _signal_workers(proc.pid, sig)
            sent = True
    code = proc.wait(timeout=300)
    if sig == signal.SIGKILL:
        return "killed"
    if len(statuses) != 1:
        raise AssertionError(f"driver exit {code}, statuses {statuses}: {proc.stderr.read() if proc.stderr else ''}")
    status = statuses.pop()
    assert code == {"completed": 0, "preempted": 3 if ranks == 1 else 1}[status], (status, code)
    return status


def _signal_workers(root_pid: int, sig: int) -> None:
    """Signal the training processes (torchrun's children, or the single process), as SLURM signals tasks."""
    children = subprocess.run(["pgrep", "-P", str(root_pid)], capture_output=True, text=True).stdout.split()
    targets = [int(p) for p in children if _is_python(int(p))] or [root_pid]
    for pid in targets:
        os.kill(pid, sig)


def _descendants(pid: int) -> list[int]:
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                               text=True).stdout.split()]
    return children + [d for c in children for d in _descendants(c)]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_python(pid: int) -> bool:
    try:
        return "toy_train_driver" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_signals_and_sigkill_resume_bit_identical(tmp_path, ranks):
    ref = tmp_path / "ref"
    assert run_until(ref, ranks, None, None) == "completed"
    total = STEPS_PER_EPOCH[ranks] * EPOCHS
    rng = random.Random(1234 + ranks)
    mid_epoch = STEPS_PER_EPOCH[ranks] + STEPS_PER_EPOCH[ranks] // 2
    stops = sorted({mid_epoch, *rng.sample(range(2, total - 2), 2)})
    kill_at = rng.randrange(2, total - 2)
    plan = [(s, signal.SIGUSR2) for s in stops] + [(kill_at, signal.SIGKILL)]
    plan.sort()
    run = tmp_path / "run"
    interrupted_at = []
    for step, sig in plan:
        done = _done_steps(run)
        status = run_until(run, ranks, max(step, done + 1), sig)
        if sig == signal.SIGUSR2:
            assert status == "preempted", f"expected a clean preemption, got {status}"
        interrupted_at.append(_done_steps(run))
    assert run_until(run, ranks, None, None) == "completed"
    assert any(s % STEPS_PER_EPOCH[ranks] for s in interrupted_at), interrupted_at  # at least one mid-epoch
    a = load_checkpoint(ref / "checkpoints" / LATEST)["models"]["model"]
    b = load_checkpoint(run / "checkpoints" / LATEST)["models"]["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (ref / "history.csv").read_text() == (run / "history.csv").read_text(), interrupted_at
    events = (run / "events.jsonl").read_text()
    assert events.count('"event": "resumed"') >= len(plan)


def _done_steps(run: Path) -> int:
    latest = run / "checkpoints" / LATEST
    return load_checkpoint(latest)["global_step"] if latest.exists() else 0
