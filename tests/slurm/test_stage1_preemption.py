"""The headline script ``sbatch sbatch/stage1_64.sh`` preempted on the real cluster: ``scancel --signal=USR2`` (what
``--signal=USR2@120`` does before the time limit) and ``scontrol requeue`` (SLURM ends the job with SIGTERM) each
make the job save, requeue and resume from its run folder's saved config.json, ending with history.csv and
weights identical to an uninterrupted run of the same script (all three jobs: ``PRESET=cpu-tiny``,
``--cpus-per-task=1``, so the same thread count)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.slurm.conftest import (SlurmCluster, assert_same_run, make_checkout, outcome, read_events,
                                 sacct_attempts, wait_interrupted)

EPOCHS = 30
ARGS = (f"train.epochs={EPOCHS}", "train.early_stopping_patience=null", "train.max_steps_per_epoch=2")
START_TIMEOUT_S = 240.0
JOB_TIMEOUT_S = 300.0
SCENARIOS = ("uninterrupted", "usr2", "requeue")


@pytest.fixture(scope="module")
def runs(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from tests.stages.test_stage1_64 import make_xray_shards

    root = tmp_path_factory.mktemp("stage1_preempt")
    shards = make_xray_shards(root / "data", n=8)
    repo = make_checkout(root / "repo")
    env = {"CTPIPE_RUNS": "runs", "XRAY2CT_SHARDS": str(shards), "PRESET": "cpu-tiny"}
    jobs = {name: slurm_cluster.sbatch("sbatch/stage1_64.sh", "--cpus-per-task=1", env={**env, "RUN_NAME": name},
                                       cwd=repo, script_args=ARGS) for name in SCENARIOS}
    states = wait_interrupted(slurm_cluster, jobs, repo / "runs" / "stage1_64", START_TIMEOUT_S, JOB_TIMEOUT_S)
    return {"repo": repo, "jobs": jobs, **states}


def _log(repo: Path, job: str) -> str:
    path = repo / "logs" / f"stage1_64-{job}.out"
    return path.read_text()[-4000:] if path.is_file() else "(no log)"


@pytest.mark.parametrize("name", ["usr2", "requeue"])
def test_stage1_script_preempted_resumes_identically(runs: dict[str, object], slurm_cluster: SlurmCluster,
                                                     name: str) -> None:
    repo: Path = runs["repo"]  # type: ignore[assignment]
    jobs: dict[str, str] = runs["jobs"]  # type: ignore[assignment]
    for scenario in ("uninterrupted", name):
        assert outcome(runs, scenario) == "COMPLETED", _log(repo, jobs[scenario])
    run_dir, reference = repo / "runs" / "stage1_64" / name, repo / "runs" / "stage1_64" / "uninterrupted"
    kinds = [e["event"] for e in read_events(run_dir)]
    assert "preempted" in kinds and "resumed" in kinds and kinds[-2:] == ["fit_end", "evaluated"], kinds
    states = [a[1] for a in sacct_attempts(slurm_cluster, jobs[name])]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    log = (repo / "logs" / f"stage1_64-{jobs[name]}.out").read_text()
    assert "resuming runs/stage1_64/" + name + " from its saved config.json" in log  # the requeued attempt
    assert_same_run(run_dir, reference)
