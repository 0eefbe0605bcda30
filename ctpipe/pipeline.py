"""A family's whole chain as one job DAG: (synthesize) -> prep array -> training (array per sweep) -> aggregate.

``ctpipe submit pipeline lodopab`` calls :func:`submit_pipeline`. On SLURM every step is a submitit job that
starts only when the jobs before it succeeded (``--dependency=afterok:...``; a failed step cancels the rest
through ``--kill-on-invalid-dep``), so the command returns as soon as everything is queued. The local and
debug executors have no scheduler: there the steps run in the same order, each waited for before the next
is submitted, so the same command works on a machine without SLURM.

Folders (each under its root of :mod:`ctpipe.paths`, made absolute before submission so a job's working
folder does not matter): ``data/<name>/{raw,shards}``, ``runs/<name>/<stage>[/<sweep point>]``,
``results/<name>/`` (``summary.csv`` etc. from the aggregate job, and ``pipeline.json``: what was submitted).
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from submitit.helpers import Checkpointable

from ctpipe.atomic import atomic_write_json
from ctpipe.launch import ExecutorKind, Resources, make_executor, submit_training, wait_all
from ctpipe.paths import data_root, results_root, runs_root

PIPELINE_FILE = "pipeline.json"


@dataclasses.dataclass(frozen=True)
class Family:
    """A data family: the stages trained on its shard set and the ones a pipeline trains by default."""

    name: str
    stages: tuple[str, ...]
    default_stages: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "lodopab": Family("lodopab", stages=("fbp_window", "fbp_unet"), default_stages=("fbp_window",)),
}


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """A small synthetic LoDoPaB-format raw set, for running the pipeline without the real data."""

    n: int = 64                 # slices over train/validation/test (80/10/10)
    n_pixels: int = 64          # geometry lodopab().scaled(n_pixels, n_angles)
    n_angles: int = 60
    samples_per_file: int = 16  # one raw file pair -> one shard
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PipelinePlan:
    """Everything a pipeline submission needs; paths are absolute."""

    family: str
    name: str
    raw: Path                      # raw LoDoPaB folder (given, or synthesized there)
    shards: Path
    runs: Path
    results: Path
    stages: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    sweep: tuple[str, ...] = ()    # "key=v1,v2" items: one training job per point (an array)
    prep_tasks: int = 8            # at most this many prep array tasks (never more than raw file pairs)
    synth: SynthSpec | None = None  # None: ``raw`` holds real data


@dataclasses.dataclass(frozen=True)
class PipelineJobs:
    """What was submitted: job ids per step (array tasks as ``ID_i``) and the plan."""

    plan: PipelinePlan
    executor: str
    prep: tuple[str, ...]
    train: dict[str, tuple[str, ...]]
    aggregate: str
    summary: Path

    def to_dict(self) -> dict[str, Any]:
        plan = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.plan).items()}
        return {"executor": self.executor, "prep": list(self.prep),
                "train": {k: list(v) for k, v in self.train.items()},
                "aggregate": self.aggregate, "summary": str(self.summary), "plan": plan,
                "submitted": datetime.datetime.now().isoformat(timespec="seconds")}


# ---- the jobs (top-level classes: submitit pickles them by reference) ---------------------------------------
class PrepLodopabJob(Checkpointable):
    """One prep array task: converts the raw pairs with ``shard index % n_tasks == task_index``.

    Checkpointable: prep is idempotent (finished shards are skipped), so a preempted task is simply requeued."""

    def __init__(self, src: str | Path, out: str | Path, n_tasks: int) -> None:
        self.src, self.out, self.n_tasks = str(src), str(out), n_tasks

    def __call__(self, task_index: int) -> dict[str, Any]:
        from ctpipe.data.lodopab import prep_lodopab

        result = prep_lodopab(self.src, self.out, task_index=task_index, n_tasks=self.n_tasks, progress=False)
        return {"task": task_index, "written": list(result.written), "skipped": list(result.skipped),
                "n_shards": result.n_shards, "manifest": None if result.manifest is None else str(result.manifest)}


class AggregateJob(Checkpointable):
    """``ctpipe aggregate`` as a job: every evaluated run under ``runs`` -> tables and PNGs in ``out``."""

    def __init__(self, runs: str | Path, out: str | Path) -> None:
        self.runs, self.out = str(runs), str(out)

    def __call__(self) -> dict[str, str]:
        from ctpipe.report import aggregate

        return {name: str(path) for name, path in aggregate(self.runs, self.out).items()}


# ---- planning ---------------------------------------------------------------------------------------------------
def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown pipeline family {name!r}; available: {sorted(FAMILIES)}")
    return FAMILIES[name]


def plan_pipeline(family: str, name: str | None = None, src: str | Path | None = None,
                  synth: SynthSpec = SynthSpec(), stages: Sequence[str] | None = None, overrides: Sequence[str] = (),
                  sweep: Sequence[str] = (), prep_tasks: int = 8, shards: str | Path | None = None) -> PipelinePlan:
    """Resolve folders and stages. Without ``src`` the raw data is synthesized (``synth``) into data/<name>/raw."""
    fam = get_family(family)
    name = name or fam.name
    chosen = tuple(stages) if stages else fam.default_stages
    unknown = [s for s in chosen if s not in fam.stages]
    if unknown:
        raise ValueError(f"--stages {','.join(unknown)}: not a stage of the {family} family (choose from "
                         f"{', '.join(fam.stages)})")
    if prep_tasks < 1:
        raise ValueError(f"--prep-tasks must be at least 1, got {prep_tasks}")
    base = data_root().resolve() / name
    raw = Path(src).resolve() if src is not None else base / "raw"
    return PipelinePlan(family=family, name=name, raw=raw,
                        shards=Path(shards).resolve() if shards is not None else base / "shards",
                        runs=runs_root().resolve() / name, results=results_root().resolve() / name, stages=chosen,
                        overrides=tuple(overrides), sweep=tuple(sweep), prep_tasks=prep_tasks,
                        synth=None if src is not None else synth)


def synthesize_raw(plan: PipelinePlan) -> None:
    """Write the synthetic raw set of ``plan`` (deterministic; files are replaced atomically)."""
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    assert plan.synth is not None
    spec = plan.synth
    geometry = ParallelBeamGeometry.lodopab().scaled(spec.n_pixels, spec.n_angles)
    write_synthetic_lodopab(plan.raw, n=spec.n, size="small", seed=spec.seed, samples_per_file=spec.samples_per_file,
                            geometry=geometry, progress=False)


def count_prep_tasks(plan: PipelinePlan) -> int:
    """Array size: one task per raw file pair at most (reads only the raw files' metadata)."""
    from ctpipe.data.lodopab import inspect_lodopab

    return min(plan.prep_tasks, len(inspect_lodopab(plan.raw).pairs))


# ---- submission -------------------------------------------------------------------------------------------------
def _step_resources(name: str, cpus: int, timeout_min: int) -> Resources:
    return Resources(timeout_min=timeout_min, cpus_per_task=cpus, job_name=name)


def _wait(jobs: Sequence[Any], executor_kind: str, say: Callable[[str], None]) -> None:
    """Wait for ``jobs``; local jobs' log lines are forwarded meanwhile (never silent for more than 30 s)."""
    if executor_kind == "local":
        from ctpipe.demo_common import follow_jobs

        follow_jobs(jobs, say, keep=lambda line: not line.startswith("submitit "))
    wait_all(jobs)


def submit_pipeline(plan: PipelinePlan, executor_kind: ExecutorKind = "local",
                    train_resources: Resources = Resources(), prep_cpus: int = 2,
                    say: Callable[[str], None] = print) -> PipelineJobs:
    """Submit (slurm) or run in order (local, debug) the steps of ``plan``; returns the job ids.

    ``say`` receives one line per step (the CLI prints them). Local/debug: returns when everything finished and
    raises with the failing job's log tail; slurm: returns once all jobs are queued.
    """
    ordered = executor_kind != "slurm"
    if plan.synth is not None:
        say(f"synthesizing {plan.synth.n} LoDoPaB-format slices ({plan.synth.n_pixels}^2 px, {plan.synth.n_angles} "
            f"angles) in {plan.raw}")
        synthesize_raw(plan)
    n_tasks = count_prep_tasks(plan)
    prep_ex = make_executor(executor_kind, plan.runs / "submitit" / "prep",
                            _step_resources(f"prep_{plan.family}", prep_cpus, 120))
    prep_jobs = prep_ex.map_array(PrepLodopabJob(plan.raw, plan.shards, n_tasks), list(range(n_tasks)))
    say(f"prep_{plan.family}: job {_array_id(prep_jobs)} ({n_tasks} array task(s)) {plan.raw} -> {plan.shards}")
    if ordered:
        _wait(prep_jobs, executor_kind, say)
    train: dict[str, tuple[str, ...]] = {}
    train_jobs: list[Any] = []
    for stage in plan.stages:
        jobs = submit_training(stage, [f"data.root={plan.shards}", *plan.overrides], plan.sweep, executor_kind,
                               plan.runs / stage, dataclasses.replace(train_resources, job_name=stage),
                               after=() if ordered else prep_jobs)
        say(f"{stage}: job {_array_id(jobs)} ({len(jobs)} run(s)) -> {plan.runs / stage}")
        if ordered:
            _wait(jobs, executor_kind, say)
        train[stage] = tuple(str(j.job_id) for j in jobs)
        train_jobs += jobs
    agg_ex = make_executor(executor_kind, plan.runs / "submitit" / "aggregate",
                           _step_resources("aggregate", 1, 30), after=() if ordered else train_jobs)
    agg_job = agg_ex.submit(AggregateJob(plan.runs, plan.results))
    say(f"aggregate: job {agg_job.job_id} -> {plan.results / 'summary.csv'}")
    if ordered:
        _wait([agg_job], executor_kind, say)
    submitted = PipelineJobs(plan=plan, executor=executor_kind, prep=tuple(str(j.job_id) for j in prep_jobs),
                             train=train, aggregate=str(agg_job.job_id), summary=plan.results / "summary.csv")
    atomic_write_json(plan.results / PIPELINE_FILE, submitted.to_dict())
    return submitted


def _array_id(jobs: Sequence[Any]) -> str:
    """``12`` for the array ``12_0, 12_1``; the id itself for a single job."""
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    return ",".join(ids)
