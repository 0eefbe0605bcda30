"""Multi-node DDP on a two-node test cluster (two slurmd on this host, ``CTPIPE_SLURM_NODES=2 cluster.sh up``),
gloo, one task per node, the same global batch as a one-task run of the same script:

* ``fbp_window.sh``: weights within 1e-6 of the one-task run (2 x 4 vs 1 x 8 samples);
* ``stage1_64.sh``: weights within 1e-6 of the one-task run (2 x 1 vs 1 x 2 samples) and every history.csv value
  within 1e-5 relative; the 2-node job also equals the same 2 ranks on one node bit for bit. Before, the
  convolutions right before a GroupNorm had a bias and the attention a key bias, whose true gradient is zero:
  Adam turned the rounding noise of that zero into lr-sized steps (24 of 90 tensors differed, up to 9e-3 at lr
  3e-3, 9.5e-5 at lr 3e-5). What remains is fp32 rounding of a different summation order, which Adam amplifies
  by up to lr/eps for gradient elements near its eps = 1e-8 (the self-attention q/k of the last block, whose
  tokens are still nearly alike): measured with torchrun, 4.0e-7 at lr 3e-5, 1.9e-7 at lr 1e-5, 3.8e-5 at lr
  3e-3. So this comparison trains at lr 1e-5 (4 steps), where a wrong split of the data or of the gradient
  average moves weights by up to 2 lr per step;
* a running 2-node ``stage1_64.sh`` preempted by ``scancel --signal=USR2`` and by ``scontrol requeue`` resumes
  and ends bit-identical to an uninterrupted 2-node run.

The module switches the cluster to two nodes and back (a restart each way)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctpipe.checkpoint import LATEST, load_checkpoint
from tests.slurm.conftest import (CLUSTER_SH, INTERRUPTIONS, SlurmCluster, TinyLodopab, assert_same_run,
                                 make_checkout, outcome, wait_interrupted)

JOB_TIMEOUT_S = 300.0
ARGS = ("train.epochs=2", "train.early_stopping_patience=null", "optim.lr=1e-5")
ROOTS = {"CTPIPE_RUNS": "runs"}


def _up(cluster: SlurmCluster, nodes: str) -> None:
    env = {**os.environ, "CTPIPE_SLURM_NODES": nodes}
    proc = subprocess.run(["bash", str(CLUSTER_SH), "up", str(cluster.state_dir)], env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"cluster.sh up with {nodes} node(s) failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def two_nodes(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    _up(slurm_cluster, "2")
    try:
        yield slurm_cluster
    finally:
        _up(slurm_cluster, "1")


def test_two_node_stage1_equals_one_task(two_nodes: SlurmCluster, tmp_path: Path) -> None:
    from tests.stages.test_stage1_64 import make_xray_shards

    cluster = two_nodes
    assert sorted(cluster.run("sinfo", "-h", "-N", "-o", "%N").split()) == ["ctpipe-n1", "ctpipe-n2"]
    shards = make_xray_shards(tmp_path / "data", n=6)  # 4 training samples: 2 ranks x 1, no sampler padding
    repo = make_checkout(tmp_path / "repo")
    env = {"CTPIPE_RUNS": "runs", "XRAY2CT_SHARDS": str(shards), "PRESET": "cpu-tiny"}
    one = cluster.sbatch("sbatch/stage1_64.sh", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1",
                         env={**env, "RUN_NAME": "one"}, cwd=repo, script_args=(*ARGS, "data.batch_size=2"))
    two = cluster.sbatch("sbatch/stage1_64.sh", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                         env={**env, "RUN_NAME": "two"}, cwd=repo, script_args=(*ARGS, "data.batch_size=1"))
    pair = cluster.sbatch("sbatch/stage1_64.sh", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                          env={**env, "RUN_NAME": "pair"}, cwd=repo, script_args=(*ARGS, "data.batch_size=1"))
    logs = {job: repo / "logs" / f"stage1_64-{job}.out" for job in (one, two, pair)}
    for job in (one, two, pair):
        state = cluster.wait(job, JOB_TIMEOUT_S)
        assert state == "COMPLETED", logs[job].read_text()[-4000:] if logs[job].is_file() else "(no log)"
    nodelist = cluster.run("sacct", "-n", "-P", "-X", "-j", two, "-o", "NodeList").strip()
    assert nodelist == "ctpipe-n[1-2]"
    log = logs[two].read_text()
    assert "rank=0/2" in log and "rank=1/2" in log  # one start-up line per rank
    h1, h2 = (pd.read_csv(repo / "runs" / "stage1_64" / n / "history.csv") for n in ("one", "two"))
    assert len(h1) == len(h2) == 2
    for col in [c for c in h1.columns if c.startswith(("train_", "val_"))]:
        assert list(h2[col]) == pytest.approx(list(h1[col]), rel=1e-5), col
    ckpt_one, ckpt_two = (load_checkpoint(repo / "runs" / "stage1_64" / n / "checkpoints" / LATEST) for n in ("one", "two"))
    assert len(ckpt_two["rank_states"]) == 2 and ckpt_one["global_step"] == ckpt_two["global_step"] == 4
    for name, w1 in ckpt_one["models"]["model"].items():
        torch.testing.assert_close(ckpt_two["models"]["model"][name], w1, rtol=0, atol=1e-6, msg=f"weight {name}")
    # The same two ranks on one node: the reduction is the same arithmetic, so the 2-node job must match it
    # bit for bit -- weights and history.
    assert_same_run(repo / "runs" / "stage1_64" / "two", repo / "runs" / "stage1_64" / "pair")


def test_two_node_fbp_window_weights_equal_one_task(two_nodes: SlurmCluster, slurm_tiny_lodopab: TinyLodopab,
                                                   tmp_path: Path) -> None:
    cluster = two_nodes
    repo = make_checkout(tmp_path / "repo")
    common = {**ROOTS, "LODOPAB_SHARDS": str(slurm_tiny_lodopab.shards)}
    args = ("train.epochs=1", "train.device=cpu")
    one = cluster.sbatch("sbatch/fbp_window.sh", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1",
                         env={**common, "RUN_NAME": "one"}, cwd=repo, script_args=(*args, "data.batch_size=8"))
    two = cluster.sbatch("sbatch/fbp_window.sh", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                         env={**common, "RUN_NAME": "two"}, cwd=repo, script_args=(*args, "data.batch_size=4"))
    for job in (one, two):
        log = repo / "logs" / f"fbp_window-{job}.out"
        assert cluster.wait(job, JOB_TIMEOUT_S) == "COMPLETED", log.read_text()[-4000:] if log.is_file() else ""
    assert cluster.run("sacct", "-n", "-P", "-X", "-j", two, "-o", "NodeList").strip() == "ctpipe-n[1-2]"
    runs = repo / "runs" / "fbp_window"
    ckpt_one, ckpt_two = (load_checkpoint(runs / n / "checkpoints" / LATEST) for n in ("one", "two"))
    assert len(ckpt_two["rank_states"]) == 2 and ckpt_one["global_step"] == ckpt_two["global_step"]
    for name, w1 in ckpt_one["models"]["model"].items():
        torch.testing.assert_close(ckpt_two["models"]["model"][name], w1, rtol=0, atol=1e-6, msg=f"weight {name}")


@pytest.fixture(scope="module")
def preempted_runs(two_nodes: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A reference 2-node stage1_64 job and one interrupted by each of INTERRUPTIONS once its first epoch ended:
    ``{"repo": ..., "jobs": {name: job id}, name: final state or the exception that stopped the driver}``."""
    from tests.stages.test_stage1_64 import make_xray_shards

    cluster = two_nodes
    root = tmp_path_factory.mktemp("two_node_preempt")
    shards = make_xray_shards(root / "data", n=6)
    repo = make_checkout(root / "repo")
    env = {"CTPIPE_RUNS": "runs", "XRAY2CT_SHARDS": str(shards), "PRESET": "cpu-tiny"}
    args = ("train.epochs=20", "train.early_stopping_patience=null", "data.batch_size=1")
    jobs = {name: cluster.sbatch("sbatch/stage1_64.sh", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                                 env={**env, "RUN_NAME": name}, cwd=repo, script_args=args)
            for name in ("reference", *INTERRUPTIONS)}
    states = wait_interrupted(cluster, jobs, repo / "runs" / "stage1_64", JOB_TIMEOUT_S, JOB_TIMEOUT_S)
    return {"repo": repo, "jobs": jobs, **states}


@pytest.mark.parametrize("name", list(INTERRUPTIONS))
def test_two_node_stage1_preempted_resumes_exactly(preempted_runs: dict[str, object], two_nodes: SlurmCluster,
                                                   name: str) -> None:
    """USR2 to both ranks of a running 2-node job (they save, the job requeues itself), or ``scontrol requeue``
    (SLURM ends both ranks with SIGTERM, they save, SLURM starts the job again): it resumes, and history.csv and
    weights are bit-identical to an uninterrupted 2-node run."""
    from tests.slurm.conftest import read_events, sacct_attempts

    repo: Path = preempted_runs["repo"]  # type: ignore[assignment]
    jobs: dict[str, str] = preempted_runs["jobs"]  # type: ignore[assignment]
    for run in ("reference", name):
        state = outcome(preempted_runs, run)
        log = repo / "logs" / f"stage1_64-{jobs[run]}.out"
        assert state == "COMPLETED", log.read_text()[-4000:] if log.is_file() else "(no log)"
    states = [a[1] for a in sacct_attempts(two_nodes, jobs[name])]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    run_dir = repo / "runs" / "stage1_64" / name
    kinds = [e["event"] for e in read_events(run_dir)]
    assert "preempted" in kinds and "resumed" in kinds, kinds
    assert_same_run(run_dir, repo / "runs" / "stage1_64" / "reference")
