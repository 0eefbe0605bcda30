"""Submission through submitit: executors (slurm | local | debug), the checkpointable training job, arrays.

The local executor is the embedded default: ``make demo`` runs the same job object a SLURM run uses.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from ctpipe.paths import runs_root
from ctpipe.stop_flag import StopFlag

log = logging.getLogger(__name__)

ExecutorKind = Literal["local", "slurm", "debug"]


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one job asks for. Site settings (partition, account) default to environment variables."""

    timeout_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1          # = GPUs per node for DDP
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float | None = None
    partition: str | None = dataclasses.field(default_factory=lambda: os.environ.get("CTPIPE_PARTITION"))
    account: str | None = dataclasses.field(default_factory=lambda: os.environ.get("CTPIPE_ACCOUNT"))
    signal_delay_s: int = 120        # SIGUSR2 this long before the time limit
    max_num_timeout: int = 10        # requeues allowed after timeouts/preemptions
    array_parallelism: int = 16
    job_name: str = "ctpipe"


def dependency_ids(jobs_or_ids: Sequence[Any]) -> list[str]:
    """SLURM job ids to depend on: an array task ``"12_3"`` becomes its array ``"12"`` (afterok waits for all)."""
    ids: list[str] = []
    for item in jobs_or_ids:
        job_id = str(getattr(item, "job_id", item)).split("_")[0]
        if not job_id.isdigit():
            raise ValueError(f"cannot depend on job {item!r}: expected a SLURM job id such as 12 or 12_3")
        if job_id not in ids:
            ids.append(job_id)
    return ids


def slurm_parameters(res: Resources, after: Sequence[Any] = ()) -> dict[str, Any]:
    """submitit parameters for ``res``; ``after``: jobs (or ids) that must succeed first (``afterok``).

    Jobs are requeueable (``--requeue``, needed by the preemption handler on sites with ``JobRequeue=0``); a job
    whose dependency failed is cancelled instead of pending forever (``--kill-on-invalid-dep=yes``).
    """
    additional: dict[str, Any] = {"requeue": True}
    params: dict[str, Any] = {
        "timeout_min": res.timeout_min,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task,
        "slurm_signal_delay_s": res.signal_delay_s,
        "slurm_array_parallelism": res.array_parallelism,
        "name": res.job_name,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    if res.partition:
        params["slurm_partition"] = res.partition
    if res.account:
        params["slurm_account"] = res.account
    if after:
        params["slurm_dependency"] = "afterok:" + ":".join(dependency_ids(after))
        additional["kill-on-invalid-dep"] = "yes"
    params["slurm_additional_parameters"] = additional
    return params


def make_executor(kind: ExecutorKind, folder: str | Path, res: Resources = Resources(),
                  after: Sequence[Any] = ()) -> submitit.Executor:
    """A configured submitit executor; ``folder`` receives submitit's logs and pickles (``%j`` allowed).

    ``after`` (slurm only): jobs or job ids that must complete successfully before these jobs start. The
    local and debug executors have no scheduler: run the steps in order yourself (see ctpipe.pipeline)."""
    folder = Path(folder)
    if after and kind != "slurm":
        raise ValueError(f"job dependencies (after={list(after)!r}) need the slurm executor; with {kind!r} wait for "
                         "the earlier jobs before submitting (ctpipe.launch.wait_all)")
    if kind == "slurm":
        # max_num_timeout is a constructor argument (update_parameters rejects it)
        executor: submitit.Executor = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                                             slurm_max_num_timeout=res.max_num_timeout)
        executor.update_parameters(**slurm_parameters(res, after))
    elif kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=res.timeout_min, tasks_per_node=res.tasks_per_node,
                                   gpus_per_node=res.gpus_per_node, nodes=1)
    elif kind == "debug":
        executor = submitit.DebugExecutor(folder=folder)
    else:
        raise ValueError(f"unknown executor {kind!r}; use one of slurm, local, debug")
    return executor


class TrainJob(Checkpointable):
    """The callable a submitit job runs: trains a stage in a run folder, resuming from its checkpoint.

    On SIGUSR2 (``--signal=USR2@N`` before the time limit, or ``scancel --signal=USR2``) the trainer finishes
    its step and writes ``latest.pt``; this job then hands over to submitit's own preemption handler, which
    calls :meth:`checkpoint` (resubmit this same job: the state is in the run folder, not in the pickle) and
    requeues. SIGTERM means SLURM itself is ending the job (``scontrol requeue``, preemption by the scheduler,
    ``scancel``): the trainer saves the same way, then the process exits with the preemption exit code without
    a result -- SLURM requeues (or cancels) the job itself, and a result written now would be stale.
    """

    def __init__(self, stage: str, run_dir: str | Path, overrides: Sequence[str] = (),
                 config_path: str | Path | None = None, force_resume: bool = False) -> None:
        self.stage = stage
        self.run_dir = str(run_dir)
        self.overrides = list(overrides)
        self.config_path = None if config_path is None else str(config_path)
        self.force_resume = force_resume

    def __call__(self) -> Any:
        from ctpipe.runner import run_stage  # lazy: the stages cost ~0.3 s in `ctpipe submit`; only the job runs them

        flag = StopFlag()
        result = run_stage(self.stage, self.run_dir, self.overrides, self.config_path, self.force_resume, flag)
        if result.status == "preempted":
            self._hand_over_to_submitit(flag)
        return result

    def _hand_over_to_submitit(self, flag: Any) -> None:
        if flag.reason == signal.Signals.SIGTERM.name:
            # SystemExit is not an Exception: submitit writes no result pickle, the requeued job writes the real one.
            raise SystemExit(int(os.environ.get("CTPIPE_PREEMPT_EXIT_CODE", 3)))
        handler = flag.previous_handlers.get(signal.SIGUSR2)
        if callable(handler):  # submitit's checkpoint_and_try_requeue: checkpoint(), requeue, exit
            handler(signal.SIGUSR2, None)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        return DelayedSubmission(TrainJob(self.stage, self.run_dir, self.overrides, self.config_path,
                                          self.force_resume))


def expand_sweep(sweep: Sequence[str]) -> list[list[str]]:
    """``["a=1,2", "b=x,y"]`` -> the cartesian product as override lists (``[]`` -> one empty set)."""
    axes = []
    for item in sweep:
        if "=" not in item:
            raise ValueError(f"--array {item!r}: expected key=v1,v2,...")
        key, values = item.split("=", 1)
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def sweep_run_dir(base: Path, overrides: Sequence[str]) -> Path:
    if not overrides:
        return base
    tag = "_".join(o.replace("/", "-").replace("=", "-") for o in overrides)
    return base / tag


def submit_training(stage: str, overrides: Sequence[str] = (), sweep: Sequence[str] = (),
                    executor_kind: ExecutorKind = "local", run_dir: str | Path | None = None,
                    resources: Resources = Resources(), config_path: str | Path | None = None,
                    after: Sequence[Any] = ()) -> list[Any]:
    """Submit one training job, or an array (one job per ``--array key=v1,v2`` point); returns the jobs.

    ``after``: jobs or SLURM job ids that must succeed first (slurm executor only, see :func:`make_executor`)."""
    return submit_training_points(stage, overrides, expand_sweep(sweep), executor_kind, run_dir, resources,
                                  config_path, after)


def submit_training_points(stage: str, overrides: Sequence[str], points: Sequence[Sequence[str]],
                           executor_kind: ExecutorKind = "local", run_dir: str | Path | None = None,
                           resources: Resources = Resources(), config_path: str | Path | None = None,
                           after: Sequence[Any] = ()) -> list[Any]:
    """Submit one job per override list in ``points`` (an array when there are several), after ``after``."""
    base = Path(run_dir) if run_dir else runs_root() / stage / "default"
    points = [list(p) for p in points] or [[]]
    executor = make_executor(executor_kind, base / "submitit", dataclasses.replace(resources, job_name=stage), after)
    jobs_to_run = [TrainJob(stage, sweep_run_dir(base, p), [*overrides, *p], config_path) for p in points]
    if len(jobs_to_run) == 1:
        return [executor.submit(jobs_to_run[0])]
    with executor.batch():
        futures = [executor.submit(job) for job in jobs_to_run]
    return futures


def wait_all(jobs: Sequence[Any], on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """Wait for every job; raise with the job's own log tail when one failed."""
    results = []
    for job in jobs:
        try:
            result = job.result()
        except Exception as err:
            stderr = ""
            try:
                stderr = (job.stderr() or "")[-4000:]
            except Exception:  # pragma: no cover - log not readable
                pass
            raise RuntimeError(f"job {job.job_id} failed: {err}\n--- job stderr (tail) ---\n{stderr}") from err
        if on_result:
            on_result(result)
        results.append(result)
    return results
