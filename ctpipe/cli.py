"""The ``ctpipe`` command: prep | train | submit | aggregate | demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ctpipe.config import ConfigError


def _array_task(args: argparse.Namespace) -> tuple[int, int]:
    """Task index/count from the flags, else from a SLURM array's environment, else (0, 1)."""
    index = args.task_index if args.task_index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))
    count = args.n_tasks if args.n_tasks is not None else int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1))
    if not 0 <= index < count:
        raise SystemExit(f"ctpipe prep: task index {index} is outside 0..{count - 1}; check --task-index/--n-tasks")
    return index, count


# ---- prep ------------------------------------------------------------------------------------------
def _prep_lodopab(args: argparse.Namespace) -> None:
    from ctpipe.data.lodopab import prep_lodopab

    index, count = _array_task(args)
    result = prep_lodopab(Path(args.src), Path(args.out), parts=tuple(args.parts.split(",")),
                          task_index=index, n_tasks=count)
    print(result)


def _prep_synth_lodopab(args: argparse.Namespace) -> None:
    from ctpipe.data.synthetic import write_synthetic_lodopab

    print(write_synthetic_lodopab(Path(args.out), n=args.n, size=args.size, seed=args.seed))


def _add_array_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-index", type=int, default=None, help="array task (default: $SLURM_ARRAY_TASK_ID or 0)")
    parser.add_argument("--n-tasks", type=int, default=None, help="array size (default: $SLURM_ARRAY_TASK_COUNT or 1)")


def _add_prep(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser("prep", help="convert raw data into HDF5 shard sets, or synthesize raw data")
    kinds = prep.add_subparsers(dest="kind", required=True)
    p = kinds.add_parser("lodopab", help="LoDoPaB-CT raw HDF5 files -> shard set")
    p.add_argument("--src", required=True, help="folder with observation_*/ground_truth_* files")
    p.add_argument("--out", required=True, help="output shard-set folder")
    p.add_argument("--parts", default="train,validation,test")
    _add_array_flags(p)
    p.set_defaults(func=_prep_lodopab)
    p = kinds.add_parser("synth-lodopab", help="synthetic phantoms written in the raw LoDoPaB file layout")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True, help="number of slices over all parts")
    p.add_argument("--size", choices=("full", "small"), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_prep_synth_lodopab)


# ---- train / submit ------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> None:
    from ctpipe.runner import run_stage

    result = run_stage(args.stage, Path(args.run_dir), args.overrides, args.config, args.force_resume)
    print(json.dumps(result.__dict__))
    if result.status == "preempted":
        sys.exit(int(os.environ.get("CTPIPE_PREEMPT_EXIT_CODE", 3)))


def _submit(args: argparse.Namespace) -> None:
    from ctpipe.launch import Resources, submit_training, wait_all

    res = Resources(timeout_min=args.timeout_min, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
                    gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task)
    jobs = submit_training(args.stage, args.overrides, args.array or (), args.executor, args.run_dir, res, args.config)
    for job in jobs:
        print(f"submitted {args.stage} job {job.job_id}")
    if args.wait:
        for result in wait_all(jobs):
            print(json.dumps(result.__dict__))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage in this process (resumes when --run-dir has a checkpoint)")
    p.add_argument("stage")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--config", default=None, help="config JSON (default: jobs/configs/<stage>.json)")
    p.add_argument("--force-resume", action="store_true", help="resume even if model/optimizer settings changed")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_train)
    p = sub.add_parser("submit", help="submit a stage through submitit (local executor by default)")
    p.add_argument("stage")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local")
    p.add_argument("--array", action="append", help="sweep key=v1,v2 (repeatable: cartesian product)")
    p.add_argument("--timeout-min", type=int, default=60)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=2)
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    p.set_defaults(func=_submit)


# ---- aggregate / demo ------------------------------------------------------------------------------------
def _aggregate(args: argparse.Namespace) -> None:
    from ctpipe.report import aggregate

    for name, path in aggregate(Path(args.runs), Path(args.out)).items():
        print(f"{name}: {path}")


def _demo(args: argparse.Namespace) -> None:
    from ctpipe.demo import run_demo

    run_demo(Path(args.workdir), n=args.n, epochs=args.epochs)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aggregate", help="tabulate evaluated runs into summary.csv / per_sample.csv + PNGs")
    p.add_argument("--runs", required=True, help="folder searched for run folders")
    p.add_argument("--out", required=True, help="output folder, e.g. results/<name>/")
    p.set_defaults(func=_aggregate)
    p = sub.add_parser("demo", help="synthetic LoDoPaB -> prep -> experiment 1 via submitit (local) -> aggregate")
    p.add_argument("--workdir", default=".", help="where data/, runs/ and results/ are created")
    p.add_argument("--n", type=int, default=400, help="synthetic slices")
    p.add_argument("--epochs", type=int, default=10)
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prep, _add_train, _add_report):
        add(sub)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; ``key=value`` overrides may come before or after the options of train/submit."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"ctpipe {args.command}: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
