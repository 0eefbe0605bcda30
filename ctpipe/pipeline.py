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
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
from submitit.helpers import Checkpointable

from ctpipe.atomic import atomic_write_json
from ctpipe.data.drr_prep import list_ct_files, prep_drr
from ctpipe.data.lodopab import inspect_lodopab, prep_lodopab
from ctpipe.data.nifti_pairs import find_pairs, prep_nifti_pairs
from ctpipe.data.synthetic import write_synthetic_lodopab
from ctpipe.data.synthetic_ct import write_synthetic_ct
from ctpipe.data.synthetic_phases import write_synthetic_phases
from ctpipe.demo_common import follow_jobs
from ctpipe.infer_pix2pix import describe, infer_folder
from ctpipe.infer_xray2ct import infer_xray2ct
from ctpipe.launch import ExecutorKind, Resources, make_executor, submit_training, wait_all
from ctpipe.ops.geometry import ParallelBeamGeometry
from ctpipe.paths import data_root, results_root, runs_root
from ctpipe.pipeline_families import FAMILIES, Family, SynthSpec, TrainStep
from ctpipe.presets import preset_overrides
from ctpipe.report import aggregate
from ctpipe.stages import get_stage
from ctpipe.summaries import Summary, emit, infer_folder_summary, infer_xray2ct_summary, jsonable, prep_summary

PIPELINE_FILE = "pipeline.json"


@dataclasses.dataclass(frozen=True)
class PipelinePlan:
    """Everything a pipeline submission needs; paths are absolute."""

    family: str
    name: str
    raw: Path                      # raw data folder (given, or synthesized there)
    shards: Path
    runs: Path
    results: Path
    stages: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    sweep: tuple[str, ...] = ()    # "key=v1,v2" items: one training job per point (an array)
    prep_tasks: int = 8            # at most this many prep array tasks (never more than raw file groups)
    synth: SynthSpec | None = None  # None: ``raw`` holds real data
    preset: str | None = None      # a ctpipe.presets name (per-stage overrides; cpu-tiny also sizes the prep)

    @property
    def steps(self) -> tuple[TrainStep, ...]:
        return tuple(s for s in get_family(self.family).steps if s.stage in self.stages)


@dataclasses.dataclass(frozen=True)
class PipelineJobs:
    """What was submitted: job ids per step (array tasks as ``ID_i``) and the plan."""

    plan: PipelinePlan
    executor: str
    prep: tuple[str, ...]
    train: dict[str, tuple[str, ...]]
    aggregate: str
    summary: Path
    infer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        plan = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.plan).items()}
        return {"executor": self.executor, "prep": list(self.prep),
                "train": {k: list(v) for k, v in self.train.items()},
                "aggregate": self.aggregate, "infer": self.infer, "summary": str(self.summary), "plan": plan,
                "submitted": datetime.datetime.now().isoformat(timespec="seconds")}


# ---- the jobs (top-level classes: submitit pickles them by reference) ---------------------------------------
def _report(summary: Summary) -> dict[str, Any]:
    """Print a step's summary lines (they end up in the job's log) and return its JSON-ready payload."""
    emit(summary, as_json=False)
    return jsonable(summary[1])


class PrepJob(Checkpointable):
    """One prep array task: ``prep(**kwargs, task_index=i, n_tasks=N)`` converts the raw file groups g with
    ``g % N == i`` (``kind`` names the prep in its summary: lodopab, drr, nifti-pairs).

    Checkpointable: prep is idempotent (finished groups are skipped), so a preempted task is simply requeued."""

    def __init__(self, kind: str, prep: Callable[..., Any], kwargs: dict[str, Any], n_tasks: int) -> None:
        self.kind, self.prep, self.kwargs, self.n_tasks = kind, prep, kwargs, n_tasks

    def __call__(self, task_index: int) -> dict[str, Any]:
        return _report(prep_summary(self.kind, self.prep(**self.kwargs, task_index=task_index, n_tasks=self.n_tasks)))


class AggregateJob(Checkpointable):
    """``ctpipe aggregate`` as a job: every evaluated run under ``runs`` -> tables and PNGs in ``out``."""

    def __init__(self, runs: str | Path, out: str | Path) -> None:
        self.runs, self.out = str(runs), str(out)

    def __call__(self) -> dict[str, str]:
        return {name: str(path) for name, path in aggregate(self.runs, self.out).items()}


class InferXray2CTJob(Checkpointable):
    """The example inference of the X-ray -> CT chain: the first test (else validation) sample of stage 1's
    evaluation through stage1_64 (+ refine_256 when trained) to a NIfTI volume in HU."""

    def __init__(self, runs: str | Path, shards: str | Path, out: str | Path, refine: bool) -> None:
        self.runs, self.shards, self.out, self.refine = str(runs), str(shards), str(out), refine

    def __call__(self) -> dict[str, Any]:
        stage1 = Path(self.runs) / "stage1_64"
        evaluated = [stage1 / "eval" / split / "stage1_64.csv" for split in ("test", "validation")]
        rows = pd.read_csv(next((p for p in evaluated if p.is_file()), evaluated[0]))
        sample = str(rows["sample_id"].iloc[0])
        refine = Path(self.runs) / "refine_256" / "checkpoints" / "best.pt" if self.refine else None
        result = infer_xray2ct(stage1 / "checkpoints" / "best.pt", self.shards, self.out, refine=refine,
                               sample_id=sample, device="cpu")
        return {"sample_id": sample, **_report(infer_xray2ct_summary(result))}


class InferPhasesJob(Checkpointable):
    """Folder inference of the test volumes (``raw/testA`` against ``raw/testB``): NIfTI predictions and
    ``metrics.csv`` (pix2pix and the identity baseline per volume)."""

    def __init__(self, checkpoint: str | Path, raw: str | Path, out: str | Path) -> None:
        self.checkpoint, self.raw, self.out = str(checkpoint), str(raw), str(out)

    def __call__(self) -> dict[str, Any]:
        trained = get_stage("pix2pix_phase").load_trained(self.checkpoint, "cpu")
        result = infer_folder(trained.generator, Path(self.raw) / "testA", self.out, trained.prep.window,
                              trained.prep.size, "cpu", target_dir=Path(self.raw) / "testB")
        return _report(infer_folder_summary(result, Path(self.out), describe(result)))


# ---- planning ---------------------------------------------------------------------------------------------------
def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown pipeline family {name!r}; available: {sorted(FAMILIES)}")
    return FAMILIES[name]


def plan_pipeline(family: str, name: str | None = None, src: str | Path | None = None,
                  synth: SynthSpec = SynthSpec(), stages: Sequence[str] | None = None, overrides: Sequence[str] = (),
                  sweep: Sequence[str] = (), prep_tasks: int = 8, shards: str | Path | None = None,
                  preset: str | None = None) -> PipelinePlan:
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
    for stage in chosen:
        preset_overrides(preset, stage)  # an unknown preset fails here, before anything is submitted
    steps = [s for s in fam.steps if s.stage in chosen]
    keys = {s.key for s in steps}
    for step in steps:
        missing = [k for _, k in step.uses if k not in keys]
        if missing:
            raise ValueError(f"--stages: {step.key} starts from {', '.join(missing)}'s weights; add that stage")
        if step.uses and sweep:
            raise ValueError(f"--array sweeps a chain whose {step.key} starts from another run's weights; sweep "
                             f"one stage at a time (--stages {steps[0].stage})")
    base = data_root().resolve() / name
    raw = Path(src).resolve() if src is not None else base / "raw"
    return PipelinePlan(family=family, name=name, raw=raw,
                        shards=Path(shards).resolve() if shards is not None else base / "shards",
                        runs=runs_root().resolve() / name, results=results_root().resolve() / name, stages=chosen,
                        overrides=tuple(overrides), sweep=tuple(sweep), prep_tasks=prep_tasks,
                        synth=None if src is not None else synth, preset=preset)


def synthesize_raw(plan: PipelinePlan) -> None:
    """Write the synthetic raw set of ``plan`` (deterministic; files are replaced atomically)."""
    assert plan.synth is not None
    spec = plan.synth
    if plan.family == "lodopab":
        geometry = ParallelBeamGeometry.lodopab().scaled(spec.n_pixels, spec.n_angles)
        write_synthetic_lodopab(plan.raw, n=spec.n, size="small", seed=spec.seed,
                                samples_per_file=spec.samples_per_file, geometry=geometry, progress=False)
    elif plan.family == "xray2ct":
        write_synthetic_ct(plan.raw, spec.n, size=spec.n_pixels, spacing_mm=320.0 / spec.n_pixels, seed=spec.seed)
    else:
        write_synthetic_phases(plan.raw, spec.n, size=spec.n_pixels, n_slices=16, seed=spec.seed)
        write_synthetic_phases(plan.raw, 2, size=spec.n_pixels, n_slices=16, seed=spec.seed + 1, subset="test")


def prep_job(plan: PipelinePlan, n_tasks: int) -> PrepJob:
    """The family's prep with its command's defaults (cpu-tiny: the sizes the preset's data fields expect)."""
    tiny = plan.preset == "cpu-tiny"
    where = {"src": str(plan.raw), "out": str(plan.shards)}
    if plan.family == "xray2ct":
        sizes: dict[str, Any] = {"xray_size": 32, "volume_sizes": (16, 32)} if tiny else {}
        return PrepJob("drr", prep_drr, {**where, **sizes}, n_tasks)
    if plan.family == "phases":
        sizes = {"size": 64, "split_fractions": (0.6, 0.2, 0.2)} if tiny else {}
        return PrepJob("nifti-pairs", prep_nifti_pairs, {**where, **sizes}, n_tasks)
    return PrepJob("lodopab", prep_lodopab, {**where, "progress": False}, n_tasks)


def count_prep_tasks(plan: PipelinePlan) -> int:
    """Array size: one task per raw file group at most (reads only the raw files' names/metadata)."""
    if plan.family == "xray2ct":
        groups = len(list_ct_files(plan.raw))
    elif plan.family == "phases":
        groups = len(find_pairs(plan.raw))
    else:
        groups = len(inspect_lodopab(plan.raw).pairs)
    return max(1, min(plan.prep_tasks, groups))


# ---- submission -------------------------------------------------------------------------------------------------
def _step_resources(name: str, cpus: int, timeout_min: int) -> Resources:
    return Resources(timeout_min=timeout_min, cpus_per_task=cpus, job_name=name)


def max_array_size(scontrol_config: str | None = None) -> int | None:
    """The cluster's ``MaxArraySize`` (array indices must stay below it) from ``scontrol show config``; None when
    scontrol is missing or does not say."""
    if scontrol_config is None:
        try:
            scontrol_config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                             timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    found = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", scontrol_config, re.MULTILINE)
    return int(found.group(1)) if found else None


def split_array(indices: Sequence[int], max_size: int | None) -> list[list[int]]:
    """``indices`` in chunks of at most ``max_size`` (one array job each); one chunk when there is no limit."""
    indices = list(indices)
    if not max_size or len(indices) <= max_size:
        return [indices]
    return [indices[k:k + max_size] for k in range(0, len(indices), max_size)]


def _submit_prep(plan: PipelinePlan, executor_kind: ExecutorKind, prep_cpus: int) -> list[Any]:
    """The prep array: one task per shard group (task i converts the groups g with g % n == i). On SLURM an
    array longer than the cluster's MaxArraySize goes in several arrays (each task keeps its global index)."""
    n_tasks = count_prep_tasks(plan)
    prep_ex = make_executor(executor_kind, plan.runs / "submitit" / "prep",
                            _step_resources(f"prep_{plan.family}", prep_cpus, 120))
    job = prep_job(plan, n_tasks)
    limit = max_array_size() if executor_kind == "slurm" else None
    jobs: list[Any] = []
    for chunk in split_array(range(n_tasks), limit):
        jobs += prep_ex.map_array(job, chunk)
    return jobs
def _wait(jobs: Sequence[Any], executor_kind: str, say: Callable[[str], None]) -> None:
    """Wait for ``jobs``; local jobs' log lines are forwarded meanwhile (never silent for more than 30 s)."""
    if executor_kind == "local":
        follow_jobs(jobs, say, keep=lambda line: not line.startswith("submitit "))
    wait_all(jobs)


def submit_pipeline(plan: PipelinePlan, executor_kind: ExecutorKind = "local",
                    train_resources: Resources = Resources(), prep_cpus: int = 2,
                    say: Callable[[str], None] = print) -> PipelineJobs:
    """Submit (slurm) or run in order (local, debug) the steps of ``plan``; returns the job ids.

    ``say`` receives one line per step (the CLI prints them). Local/debug: returns when everything finished and
    raises with the failing job's log tail; slurm: returns once all jobs are queued (each with ``afterok`` on
    the jobs it needs and ``--kill-on-invalid-dep=yes``, so a failed step cancels everything after it).
    """
    ordered = executor_kind != "slurm"
    if plan.synth is not None:
        say(f"synthesizing {plan.synth.n} {plan.family} samples ({plan.synth.n_pixels} px) in {plan.raw}")
        synthesize_raw(plan)
    prep_jobs = _submit_prep(plan, executor_kind, prep_cpus)
    say(f"prep_{plan.family}: job {_array_id(prep_jobs)} ({len(prep_jobs)} array task(s)) {plan.raw} -> {plan.shards}")
    if ordered:
        _wait(prep_jobs, executor_kind, say)
    train: dict[str, tuple[str, ...]] = {}
    by_key: dict[str, list[Any]] = {}
    train_jobs: list[Any] = []
    for step in plan.steps:
        uses = [f"{over}={plan.runs / key / 'checkpoints' / 'best.pt'}" for over, key in step.uses]
        after = [j for _, key in step.uses for j in by_key[key]] or prep_jobs
        overrides = [*preset_overrides(plan.preset, step.stage), f"data.root={plan.shards}", *step.extra, *uses,
                     *plan.overrides]
        jobs = submit_training(step.stage, overrides, plan.sweep, executor_kind, plan.runs / step.key,
                               dataclasses.replace(train_resources, job_name=step.stage),
                               after=() if ordered else after)
        say(f"{step.key}: job {_array_id(jobs)} ({len(jobs)} run(s)) -> {plan.runs / step.key}")
        if ordered:
            _wait(jobs, executor_kind, say)
        train[step.key] = tuple(str(j.job_id) for j in jobs)
        by_key[step.key] = jobs
        train_jobs += jobs
    agg_ex = make_executor(executor_kind, plan.runs / "submitit" / "aggregate",
                           _step_resources("aggregate", 1, 30), after=() if ordered else train_jobs)
    agg_job = agg_ex.submit(AggregateJob(plan.runs, plan.results))
    say(f"aggregate: job {agg_job.job_id} -> {plan.results / 'summary.csv'}")
    if ordered:
        _wait([agg_job], executor_kind, say)
    infer_job = _submit_inference(plan, executor_kind, by_key, agg_job)
    if infer_job is not None:
        say(f"infer: job {infer_job.job_id} -> {plan.results / 'inference'}")
        if ordered:
            _wait([infer_job], executor_kind, say)
    submitted = PipelineJobs(plan=plan, executor=executor_kind, prep=tuple(str(j.job_id) for j in prep_jobs),
                             train=train, aggregate=str(agg_job.job_id), summary=plan.results / "summary.csv",
                             infer=None if infer_job is None else str(infer_job.job_id))
    atomic_write_json(plan.results / PIPELINE_FILE, submitted.to_dict())
    return submitted


def _submit_inference(plan: PipelinePlan, executor_kind: ExecutorKind, by_key: dict[str, list[Any]],
                      agg_job: Any) -> Any | None:
    """The family's example inference after the aggregate job (None when the chain has none or no sweep-free
    run to take weights from)."""
    if plan.sweep:
        return None
    job: Any = None
    out = plan.results / "inference"
    if plan.family == "xray2ct" and "stage1_64" in by_key:
        job = InferXray2CTJob(plan.runs, plan.shards, out / "example.nii.gz", refine="refine_256" in by_key)
    elif plan.family == "phases" and "pix2pix_phase" in by_key and (plan.raw / "testA").is_dir():
        job = InferPhasesJob(plan.runs / "pix2pix_phase" / "checkpoints" / "best.pt", plan.raw, out)
    if job is None:
        return None
    ex = make_executor(executor_kind, plan.runs / "submitit" / "infer", _step_resources("infer", 1, 30),
                       after=() if executor_kind != "slurm" else [agg_job])
    return ex.submit(job)


def _array_id(jobs: Sequence[Any]) -> str:
    """``12`` for the array ``12_0, 12_1``; the id itself for a single job."""
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    return ",".join(ids)
