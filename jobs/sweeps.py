"""Sweeps as small Python functions: each returns a list of override lists, one training job per entry.

Submit one with ``python -m jobs.sweeps NAME [--executor slurm|local|debug] [--run-dir DIR] [overrides...]``;
the jobs go out as one submitit array (``executor.batch()``), each in ``<run-dir>/<overrides>``.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Callable


def fbp_window_lr() -> list[list[str]]:
    """Experiment 1: learning rate of the window parameters."""
    return [[f"optim.lr={lr}"] for lr in (3e-2, 1e-2, 3e-3)]


def fbp_window_terms() -> list[list[str]]:
    """Experiment 1: how many cosine terms the learnable window needs, with two seeds."""
    return [[f"model.n_terms={n}", f"train.seed={s}"] for n, s in itertools.product((2, 4, 8), (0, 1))]


SWEEPS: dict[str, tuple[str, Callable[[], list[list[str]]]]] = {
    "fbp_window_lr": ("fbp_window", fbp_window_lr),
    "fbp_window_terms": ("fbp_window", fbp_window_terms),
}


def main(argv: list[str] | None = None) -> None:
    from ctpipe.launch import submit_training_points

    parser = argparse.ArgumentParser(prog="python -m jobs.sweeps", description=__doc__)
    parser.add_argument("name", choices=sorted(SWEEPS))
    parser.add_argument("--executor", choices=("slurm", "local", "debug"), default="local")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    stage, sweep = SWEEPS[args.name]
    for job in submit_training_points(stage, args.overrides, sweep(), args.executor, args.run_dir):
        print(f"submitted {stage} job {job.job_id}")


if __name__ == "__main__":
    main()
