"""``make demo``: synthetic LoDoPaB-format data -> shards -> experiment 1 via submitit (local) -> CSV + PNG."""

from __future__ import annotations

import time
from pathlib import Path

from ctpipe.data.lodopab import prep_lodopab
from ctpipe.data.synthetic import write_synthetic_lodopab
from ctpipe.demo_common import DemoLog, follow_jobs, job_logs
from ctpipe.launch import Resources, submit_training, wait_all
from ctpipe.report import aggregate

DEMO_NAME = "demo"


def run_demo(workdir: Path, n: int = 400, epochs: int = 10, seed: int = 0) -> dict[str, Path]:
    """Run the main job end to end in ``workdir``; returns the output files (and prints them)."""
    start = time.monotonic()
    raw = workdir / "data" / DEMO_NAME / "raw"
    shards = workdir / "data" / DEMO_NAME / "shards"
    runs = workdir / "runs" / DEMO_NAME
    results = workdir / "results" / DEMO_NAME
    log = DemoLog("demo", results / "demo.log")
    say = log.say
    say(f"log: {log.path}; outputs: {results}")
    say(f"1/4 synthesizing {n} LoDoPaB-format slices (small geometry) in {raw}")
    write_synthetic_lodopab(raw, n=n, size="small", seed=seed)
    say(f"2/4 converting raw files to shards in {shards}")
    prep_lodopab(raw, shards)
    run_dir = runs / "fbp_window" / "learned_window"
    say(f"3/4 training experiment 1 (learned window, {epochs} epochs) through the submitit local executor in "
        f"{run_dir}")
    overrides = [f"data.root={shards}", f"train.epochs={epochs}", "train.log_every=10"]
    jobs = submit_training("fbp_window", overrides, executor_kind="local", run_dir=run_dir,
                           resources=Resources(timeout_min=30))
    for job in jobs:
        say(f"   job {job.job_id}: training log {job_logs(job)[1]} (forwarded below)")
    follow_jobs(jobs, say, keep=lambda line: not line.startswith("submitit "))
    for result in wait_all(jobs):
        say(f"   job finished: status={result.status} epochs={result.epoch}")
    say(f"4/4 aggregating into {results}")
    outputs = aggregate(runs, results)
    say(f"done in {time.monotonic() - start:.1f} s")
    for name, path in outputs.items():
        say(f"{name}: {path}")
    say(f"demo log: {log.path}")
    return outputs
