"""Preemption on a real SLURM: a running fbp_window training job is signalled, requeued, resumes from its
checkpoint and ends bit-identical (weights, history.csv) to an uninterrupted run of the same config.

Two ways to run a job x two ways SLURM interrupts it:

* the bare script ``sbatch sbatch/fbp_window.sh`` and the submitit path (:class:`ctpipe.launch.TrainJob`);
* ``scancel --signal=USR2 <id>`` -- what ``--signal=USR2@120`` does before the time limit: the trainer saves
  and exits 3 (script: ``ctpipe_requeue_if_preempted`` requeues; submitit: its handler requeues);
* ``scontrol requeue <id>`` -- SLURM ends the job itself with SIGTERM (SIGKILL after KillWait=10 s): the
  trainer saves on SIGTERM too, and SLURM restarts the job.

The four scenarios run concurrently (one CPU each on the 4-CPU test cluster) from one module fixture while
the uninterrupted reference trains in this process; each test then checks one scenario.  Every scenario waits
until its run has finished an epoch (so the trainer's signal handler is installed and a checkpoint exists)
before signalling, and every wait is bounded.  The measured times (signal -> checkpoint saved, end of the
first attempt -> start of the second, signal -> training resumed) are printed (``-s``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from ctpipe.checkpoint import LATEST, load_checkpoint
from ctpipe.launch import Resources, submit_training
from tests.slurm.conftest import (
    SlurmCluster,
    TinyLodopab,
    make_checkout,
    outcome,
    read_events,
    run_concurrently,
    sacct_attempts,
    wait_for,
)

EPOCHS = 15
TRAIN = [f"train.epochs={EPOCHS}", "train.early_stopping_patience=null", "train.device=cpu"]
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 180.0


@dataclasses.dataclass(frozen=True)
class Interrupted:
    """What a scenario left behind."""

    run_dir: Path
    job_id: str
    attempts: list[tuple[str, str, str, str]]
    signalled_at: float
    log: str


@dataclasses.dataclass(frozen=True)
class Started:
    """A submitted training job: where it trains, how to read its log, the submitit job (or None)."""

    run_dir: Path
    job_id: str
    log: Callable[[], str]
    submitit_job: Any = None


# ---- submission -------------------------------------------------------------------------------------------------
def _start_script(cluster: SlurmCluster, data: TinyLodopab, root: Path, name: str) -> Started:
    """``sbatch sbatch/fbp_window.sh`` from a repository-like folder (run folder named by RUN_NAME)."""
    repo = make_checkout(root / name)
    env = {"CTPIPE_RUNS": "runs", "LODOPAB_SHARDS": str(data.shards), "RUN_NAME": name}
    job = cluster.sbatch("sbatch/fbp_window.sh", "--cpus-per-task=1", env=env, cwd=repo, script_args=tuple(TRAIN))
    log_path = repo / "logs" / f"fbp_window-{job}.out"
    return Started(repo / "runs" / "fbp_window" / name, job,
                   lambda: log_path.read_text() if log_path.is_file() else "(no log yet)")


def _start_submitit(cluster: SlurmCluster, data: TinyLodopab, root: Path, name: str) -> Started:
    """ctpipe.launch.submit_training on the slurm executor (a fresh submitit folder inside the run folder)."""
    run_dir = root / name
    # timeout_min >= 13: submitit counts a USR2 within min(80 %, limit - 10 min) of the start as a time-out
    res = Resources(timeout_min=20, cpus_per_task=1, partition=None, account=None)
    (job,) = submit_training("fbp_window", [f"data.root={data.shards}", *TRAIN], executor_kind="slurm",
                             run_dir=run_dir, resources=res)

    def log() -> str:  # whole files: submitit's requeue lines sit before the second attempt's output
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted((run_dir / "submitit").glob("*_log.*")))

    return Started(run_dir, str(job.job_id), log, job)


STARTERS: dict[str, Callable[[SlurmCluster, TinyLodopab, Path, str], Started]] = {
    "script-usr2": _start_script,
    "script-requeue": _start_script,
    "submitit-usr2": _start_submitit,
    "submitit-requeue": _start_submitit,
}


def _signal(cluster: SlurmCluster, scenario: str, job_id: str) -> None:
    if scenario.endswith("usr2"):
        cluster.run("scancel", "--signal=USR2", job_id)  # the job's steps, as --signal=USR2@120 does
    else:
        cluster.run("scontrol", "requeue", job_id)  # SLURM ends the job (SIGTERM) and restarts it


def _interrupt(cluster: SlurmCluster, started: Started, scenario: str) -> Interrupted:
    """Wait for the first finished epoch, signal, wait for the job to finish for good."""
    try:
        wait_for(lambda: any(e["event"] == "epoch_end" for e in read_events(started.run_dir)), START_TIMEOUT_S,
                 f"job {started.job_id} to finish its first epoch")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{started.log()}") from err
    signalled_at = time.time()
    _signal(cluster, scenario, started.job_id)
    state = cluster.wait(started.job_id, JOB_TIMEOUT_S)
    assert state == "COMPLETED", started.log()
    return Interrupted(started.run_dir, started.job_id, sacct_attempts(cluster, started.job_id), signalled_at,
                       started.log())


@dataclasses.dataclass(frozen=True)
class Scenarios:
    reference: Path                                   # the uninterrupted run folder
    started: dict[str, Started]
    outcomes: dict[str, object]  # what each scenario's driver returned (Interrupted) or raised

    def get(self, name: str) -> tuple[Interrupted, Started]:
        return outcome(self.outcomes, name), self.started[name]


@pytest.fixture(scope="module")
def scenarios(slurm_cluster: SlurmCluster, slurm_tiny_lodopab: TinyLodopab,
              tmp_path_factory: pytest.TempPathFactory) -> Scenarios:
    """Submit all four jobs, drive each in a thread, train the reference here meanwhile; wait for everything."""
    from ctpipe.runner import run_stage

    root = tmp_path_factory.mktemp("preemption")
    started = {name: start(slurm_cluster, slurm_tiny_lodopab, root, name) for name, start in STARTERS.items()}
    reference = root / "uninterrupted"

    def train_reference() -> None:  # here, while the drivers wait: the trainer installs signal handlers
        result = run_stage("fbp_window", reference, [f"data.root={slurm_tiny_lodopab.shards}", *TRAIN])
        assert result.status == "completed" and result.epoch == EPOCHS

    drivers = {name: functools.partial(_interrupt, slurm_cluster, started[name], name) for name in started}
    # each driver's own waits are bounded; the timeout bounds the total once more
    outcomes = run_concurrently(drivers, START_TIMEOUT_S + JOB_TIMEOUT_S + 60, meanwhile=train_reference)
    return Scenarios(reference, started, outcomes)


# ---- checks -----------------------------------------------------------------------------------------------------
def _assert_resumed_exactly(result: Interrupted, reference: Path, reason: str) -> None:
    events = read_events(result.run_dir)
    kinds = [e["event"] for e in events]
    assert "preempted" in kinds and "resumed" in kinds, f"{kinds}\n{result.log}"
    preempted = next(e for e in events if e["event"] == "preempted")
    assert preempted["reason"] == reason  # the trainer itself saved on this signal before the job ended
    assert kinds.index("resumed") > kinds.index("preempted")
    assert kinds[-2:] == ["fit_end", "evaluated"]
    # SLURM: one requeued attempt, then the completed one
    states = [a[1] for a in result.attempts]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED" and len(states) == 2, result.attempts
    # every epoch exactly once, the same numbers as the uninterrupted run, bit-identical weights
    history = (result.run_dir / "history.csv").read_text()
    epochs = [int(line.split(",")[0]) for line in history.splitlines()[1:]]
    assert epochs == list(range(1, EPOCHS + 1))
    assert history == (reference / "history.csv").read_text()
    ours = load_checkpoint(result.run_dir / "checkpoints" / LATEST)["models"]
    theirs = load_checkpoint(reference / "checkpoints" / LATEST)["models"]
    for module, weights in theirs.items():
        for name, tensor in weights.items():
            assert torch.equal(ours[module][name], tensor), f"{module}.{name} differs after the resume"
    _report(result, preempted, next(e for e in events if e["event"] == "resumed"))


def _report(result: Interrupted, preempted: dict, resumed: dict) -> None:
    first, second = result.attempts[0], result.attempts[1]
    gap = time.mktime(time.strptime(second[2], "%Y-%m-%dT%H:%M:%S")) - time.mktime(
        time.strptime(first[3], "%Y-%m-%dT%H:%M:%S"))
    print(f"\n[requeue timing] job {result.job_id}: signal -> checkpoint saved "
          f"{preempted['time'] - result.signalled_at:.1f} s (epoch {preempted['epoch']} step {preempted['step']}); "
          f"attempt 1 end -> attempt 2 start {gap:.0f} s (sacct); signal -> training resumed "
          f"{resumed['time'] - result.signalled_at:.1f} s")


@pytest.mark.slow
def test_script_usr2_requeues_and_resumes_exactly(scenarios: Scenarios) -> None:
    result, _ = scenarios.get("script-usr2")
    _assert_resumed_exactly(result, scenarios.reference, "SIGUSR2")
    assert "preempted (exit 3, restart 0): requeueing" in result.log  # ctpipe_requeue_if_preempted did it
    assert "restart 1" in result.log


@pytest.mark.slow
def test_script_scontrol_requeue_resumes_exactly(scenarios: Scenarios) -> None:
    result, _ = scenarios.get("script-requeue")
    _assert_resumed_exactly(result, scenarios.reference, "SIGTERM")
    assert "restart 1" in result.log


@pytest.mark.slow
def test_submitit_usr2_checkpoints_requeues_and_resumes_exactly(scenarios: Scenarios) -> None:
    result, started = scenarios.get("submitit-usr2")
    _assert_resumed_exactly(result, scenarios.reference, "SIGUSR2")
    assert "this job is preempted" in result.log and "Requeued job" in result.log  # submitit's own handler
    outcome = started.submitit_job.result()
    assert (outcome.status, outcome.epoch) == ("completed", EPOCHS)


@pytest.mark.slow
def test_submitit_scontrol_requeue_resumes_exactly(scenarios: Scenarios) -> None:
    result, started = scenarios.get("submitit-requeue")
    _assert_resumed_exactly(result, scenarios.reference, "SIGTERM")
    assert "Requeued job" not in result.log  # SLURM requeued it, not submitit's handler
    outcome = started.submitit_job.result()
    assert (outcome.status, outcome.epoch) == ("completed", EPOCHS)
