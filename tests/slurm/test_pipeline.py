"""The LoDoPaB family on a real SLURM: the sbatch/ stage scripts, `ctpipe submit pipeline`, 2-rank DDP.

* every sbatch/*.sh passes ``bash -n`` and shellcheck (installed with apt when missing) and carries the
  portable headers of sbatch/README.md;
* ``sbatch sbatch/prep_lodopab.sh`` (array) -> ``sbatch --dependency=afterok`` fbp_window.sh -> aggregate.sh,
  submitted exactly as documented from a repository-like folder, gives the same summary.csv values as the same
  config trained in-process on shards prepped by one task;
* ``ctpipe submit pipeline lodopab --executor slurm`` (synthesized data, a 2-point sweep) completes: every
  job COMPLETED in sacct, summary.csv has both runs;
* a 2-task job (gloo DDP, per-rank batch 4) matches the 1-task job (batch 8) over one epoch.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctpipe.checkpoint import LATEST, load_checkpoint
from tests.slurm.conftest import REPO_ROOT, SlurmCluster, TinyLodopab, make_checkout, run_concurrently

SBATCH_DIR = REPO_ROOT / "sbatch"
JOB_TIMEOUT_S = 150.0
ROOTS = {"CTPIPE_DATA": "data", "CTPIPE_RUNS": "runs", "CTPIPE_RESULTS": "results"}  # = the defaults
TRAIN = ["train.epochs=2", "train.device=cpu"]
VOLATILE = ["run", "wall_time_s"]  # absolute run folder and wall time differ between two runs of one config


# ---- the scripts themselves --------------------------------------------------------------------------------------
def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:  # the SLURM tests run as root on Debian/Ubuntu (cluster.sh installs SLURM the same way)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "shellcheck"], env=env,
                                 capture_output=True, text=True, timeout=300)
        if install.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
            install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "shellcheck"],
                                     env=env, capture_output=True, text=True, timeout=300)
        assert install.returncode == 0, f"apt-get install shellcheck failed:\n{install.stderr}"
        found = shutil.which("shellcheck")
    assert found is not None
    return found


STAGE_SCRIPTS = sorted(p.name for p in SBATCH_DIR.glob("*.sh") if not p.name.startswith("_"))


def test_every_sbatch_script_parses_and_passes_shellcheck() -> None:
    scripts = sorted(SBATCH_DIR.glob("*.sh"))
    assert {"prep_lodopab.sh", "fbp_window.sh", "aggregate.sh", "_site.sh"} <= {p.name for p in scripts}
    for script in scripts:
        parse = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert parse.returncode == 0, f"{script}: {parse.stderr}"
    check = subprocess.run([_shellcheck(), "-x", *[str(p.relative_to(REPO_ROOT)) for p in scripts]],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def _headers(script: Path) -> list[str]:
    return [line.split(None, 1)[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]


@pytest.mark.parametrize("name", STAGE_SCRIPTS)
def test_stage_scripts_have_the_portable_headers(name: str) -> None:
    script = SBATCH_DIR / name
    text = script.read_text()
    headers = _headers(script)
    assert text.startswith("#!/bin/bash\n")
    for prefix in ("--job-name=", "--time=", "--nodes=", "--ntasks-per-node=", "--cpus-per-task=", "--output=logs/"):
        assert any(h.startswith(prefix) for h in headers), f"{name} lacks #SBATCH {prefix}"
    assert "--requeue" in headers and "--open-mode=append" in headers
    assert not any("$" in h for h in headers), "#SBATCH lines cannot read variables (sbatch/README.md)"
    body = 'source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_stage_body.sh"'
    assert 'source "${CTPIPE_REPO:-${SLURM_SUBMIT_DIR:-.}}/sbatch/_site.sh"' in text or body in text
    if "--array" in " ".join(headers):
        assert "--output=logs/%x-%A_%a.out" in headers
    if "ctpipe_train_stage" in text:  # training: the shared body; signalled before the time limit
        assert body in text and "--signal=USR2@120" in headers
        assert "ctpipe.cli train" not in text, "training goes through ctpipe_train_stage (sbatch/_stage_body.sh)"


TRAINING_SCRIPTS = ("stage1_64.sh", "refine_256.sh", "direct_256.sh", "fbp_window.sh", "fbp_unet.sh",
                    "pix2pix_phase.sh")


def test_training_scripts_share_one_body() -> None:
    body = (SBATCH_DIR / "_stage_body.sh").read_text()
    assert "ctpipe_srun python -m ctpipe.cli train" in body and "ctpipe_requeue_if_preempted $?" in body
    for name in TRAINING_SCRIPTS:
        code = [line for line in (SBATCH_DIR / name).read_text().splitlines() if line and not line.startswith("#")]
        assert any("ctpipe_train_stage" in line for line in code), name
        assert len(code) <= 20, f"{name}: {len(code)} lines of code; the shared part belongs in _stage_body.sh"


def test_every_documented_dependency_kills_on_a_failed_step() -> None:
    """A chain whose step fails must not leave the rest PENDING (DependencyNeverSatisfied) forever."""
    files = [*SBATCH_DIR.glob("*.sh"), SBATCH_DIR / "README.md", REPO_ROOT / "README.md"]
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "--dependency" in line and "sbatch" in line:
                assert "--kill-on-invalid-dep=yes" in line, f"{path.name}:{n}: {line.strip()}"


# ---- (a) the three scripts, chained with afterok, against an in-process run ---------------------------------------
def _local_reference(data: TinyLodopab, root: Path) -> Path:
    """The same config trained in this process (`ctpipe train`'s function) on one-task shards, then aggregated."""
    from ctpipe.report import aggregate
    from ctpipe.runner import run_stage

    result = run_stage("fbp_window", root / "runs" / "fbp_window" / "default", [f"data.root={data.shards}", *TRAIN])
    assert result.status == "completed"
    return aggregate(root / "runs", root / "results")["summary"]


def _metrics(summary: Path) -> pd.DataFrame:
    frame = pd.read_csv(summary).drop(columns=VOLATILE)
    return frame.sort_values(["model", "split"]).reset_index(drop=True)


def _log_tail(folder: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.out")))


@pytest.mark.slow
def test_sbatch_chain_matches_in_process_run(slurm_cluster: SlurmCluster, slurm_tiny_lodopab: TinyLodopab,
                                             tmp_path: Path) -> None:
    repo = make_checkout(tmp_path / "repo")
    shutil.copytree(slurm_tiny_lodopab.raw, repo / "data" / "lodopab" / "raw")

    def submit(script: str, *args: str, script_args: tuple[str, ...] = ()) -> str:
        return slurm_cluster.sbatch(script, *args, env=ROOTS, script_args=script_args, cwd=repo)

    # exactly the documented commands, from the repository root
    prep = submit("sbatch/prep_lodopab.sh", "--array=0-1")
    train = submit("sbatch/fbp_window.sh", f"--dependency=afterok:{prep}", script_args=tuple(TRAIN))
    agg = submit("sbatch/aggregate.sh", f"--dependency=afterok:{train}",
                 script_args=("runs", "results/sbatch_chain"))
    reference = _local_reference(slurm_tiny_lodopab, tmp_path / "local")  # runs while the jobs do
    state = slurm_cluster.wait(agg, JOB_TIMEOUT_S)
    assert state == "COMPLETED", _log_tail(repo / "logs")
    assert slurm_cluster.sacct_states(prep) == {f"{prep}_0": "COMPLETED", f"{prep}_1": "COMPLETED"}
    assert slurm_cluster.sacct_states(train) == {train: "COMPLETED"}
    # both array tasks wrote their own shards; one of them wrote the manifest
    logs = sorted((repo / "logs").glob("prep_lodopab-*.out"))
    assert [p.name for p in logs] == [f"prep_lodopab-{prep}_0.out", f"prep_lodopab-{prep}_1.out"]
    manifest = json.loads((repo / "data" / "lodopab" / "shards" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4
    assert (repo / "runs" / "fbp_window" / "default" / "checkpoints" / LATEST).is_file()
    ours, theirs = _metrics(repo / "results" / "sbatch_chain" / "summary.csv"), _metrics(reference)
    assert len(ours) == 4  # fbp_hann + learned_window on validation + test
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)


# ---- (b) ctpipe submit pipeline --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_submit_pipeline_runs_the_dag_on_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    env = {k: v for k, v in slurm_cluster.env.items() if k not in ROOTS}  # default roots: under the working folder
    cmd = [sys.executable, "-m", "ctpipe.cli", "submit", "pipeline", "lodopab", "--executor", "slurm",
           "--n-synth", "40", "--synth-pixels", "32", "--synth-angles", "24", "--prep-tasks", "2",
           "--cpus-per-task", "1", "--timeout-min", "10", "--array", "optim.lr=0.01,0.003", *TRAIN]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submitted = json.loads((tmp_path / "results" / "lodopab" / "pipeline.json").read_text())
    prep_array = submitted["prep"][0].split("_")[0]
    train_ids = submitted["train"]["fbp_window"]
    train_array = train_ids[0].split("_")[0]
    for job_id in (prep_array, train_array, submitted["aggregate"]):
        assert f"job {job_id}" in proc.stdout  # the ids are printed
    assert slurm_cluster.wait(submitted["aggregate"], JOB_TIMEOUT_S) == "COMPLETED", _submitit_tail(tmp_path)
    assert slurm_cluster.sacct_states(prep_array) == {f"{prep_array}_0": "COMPLETED", f"{prep_array}_1": "COMPLETED"}
    assert slurm_cluster.sacct_states(train_array) == {t: "COMPLETED" for t in train_ids} and len(train_ids) == 2
    # the dependencies were real: each step started after the previous one ended
    starts_ends = {k: _start_end(slurm_cluster, k) for k in (prep_array, train_array, submitted["aggregate"])}
    assert starts_ends[train_array][0] >= starts_ends[prep_array][1]
    assert starts_ends[submitted["aggregate"]][0] >= starts_ends[train_array][1]
    summary = pd.read_csv(tmp_path / "results" / "lodopab" / "summary.csv")
    runs = sorted({Path(r).name for r in summary["run"]})
    assert runs == ["optim.lr-0.003", "optim.lr-0.01"]
    assert sorted(set(summary["model"])) == ["fbp_hann", "learned_window"]
    assert set(summary["epochs"][summary["model"] == "learned_window"]) == {2}


@pytest.mark.slow
def test_failed_prep_task_cancels_training_and_aggregate(slurm_cluster: SlurmCluster,
                                                         slurm_tiny_lodopab: TinyLodopab, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN in one raw file fails its prep task; --kill-on-invalid-dep cancels the dependants (no endless PENDING)."""
    import h5py
    import numpy as np

    from ctpipe.launch import Resources
    from ctpipe.pipeline import plan_pipeline, submit_pipeline

    raw = tmp_path / "raw"
    shutil.copytree(slurm_tiny_lodopab.raw, raw)
    with h5py.File(raw / "ground_truth_test_000.hdf5", "r+") as handle:  # shard 3: array task 1 of 2
        data = handle["data"][...]
        data[0, 0, 0] = np.nan
        handle["data"][...] = data
    monkeypatch.chdir(tmp_path)
    plan = plan_pipeline("lodopab", name="broken", src=raw, overrides=TRAIN, prep_tasks=2)
    jobs = submit_pipeline(plan, "slurm", Resources(timeout_min=10, cpus_per_task=1, partition=None, account=None),
                           say=lambda _: None)
    prep = jobs.prep[0].split("_")[0]
    assert slurm_cluster.wait(jobs.aggregate, JOB_TIMEOUT_S) == "CANCELLED"
    # task 1's failure cancels the dependants at once; task 0 may still be running then (a loaded machine)
    assert slurm_cluster.wait(prep, JOB_TIMEOUT_S) == "COMPLETED,FAILED"
    assert slurm_cluster.sacct_states(prep) == {f"{prep}_0": "COMPLETED", f"{prep}_1": "FAILED"}
    assert slurm_cluster.sacct_states(jobs.train["fbp_window"][0]) == {jobs.train["fbp_window"][0]: "CANCELLED"}
    assert not (plan.shards / "manifest.json").exists()
    assert not (plan.runs / "fbp_window" / "config.json").exists()  # training never started


def _start_end(cluster: SlurmCluster, job_id: str) -> tuple[str, str]:
    """Earliest start and latest end over the allocations of ``job_id`` (ISO strings sort chronologically)."""
    out = cluster.run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "Start,End")
    rows = [line.split("|") for line in out.splitlines() if "|" in line]
    return min(r[0] for r in rows), max(r[1] for r in rows)


def _submitit_tail(root: Path) -> str:
    logs = sorted(root.glob("runs/**/submitit/*_log.*"))
    return "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs)


# ---- (d) 2-rank DDP equals 1 rank with the same global batch ---------------------------------------------------------
@pytest.mark.slow
def test_two_task_ddp_matches_one_task(slurm_cluster: SlurmCluster, slurm_tiny_lodopab: TinyLodopab,
                                       tmp_path: Path) -> None:
    """Same global batch (1 x 8 vs 2 x 4), same sample order (rank r takes every 2nd sample of the same
    permutation, so each step's union is the 1-rank batch; 32 training samples leave no padding), DDP averages
    the two ranks' mean gradients = the 8-sample mean gradient. Only float summation order differs, so the
    per-step gradients agree to ~1e-7 relative; Adam's update is a smooth function of them (lr=0.01, 4 steps),
    so the weights agree to well below 1e-6 and the validation values (pure functions of the weights) to 1e-5.
    """
    repo = make_checkout(tmp_path / "repo")
    common = {**ROOTS, "LODOPAB_SHARDS": str(slurm_tiny_lodopab.shards)}
    one = slurm_cluster.sbatch("sbatch/fbp_window.sh", "--ntasks-per-node=1", "--cpus-per-task=1",
                               env={**common, "RUN_NAME": "one"}, cwd=repo,
                               script_args=("train.epochs=1", "data.batch_size=8", "train.device=cpu"))
    two = slurm_cluster.sbatch("sbatch/fbp_window.sh", "--ntasks-per-node=2", "--cpus-per-task=1",
                               env={**common, "RUN_NAME": "two"}, cwd=repo,
                               script_args=("train.epochs=1", "data.batch_size=4", "train.device=cpu"))
    states = run_concurrently({job: functools.partial(slurm_cluster.wait, job, JOB_TIMEOUT_S) for job in (one, two)},
                              JOB_TIMEOUT_S + 60)
    assert states == {one: "COMPLETED", two: "COMPLETED"}, _log_tail(repo / "logs")
    two_log = (repo / "logs" / f"fbp_window-{two}.out").read_text()
    assert "WORLD_SIZE=2" in two_log
    runs = repo / "runs" / "fbp_window"
    ckpt_one, ckpt_two = (load_checkpoint(runs / n / "checkpoints" / LATEST) for n in ("one", "two"))
    assert len(ckpt_one["rank_states"]) == 1 and len(ckpt_two["rank_states"]) == 2  # two ranks really trained
    assert ckpt_one["global_step"] == ckpt_two["global_step"] == 4  # 32 samples / global batch 8
    for name, w1 in ckpt_one["models"]["model"].items():
        w2 = ckpt_two["models"]["model"][name]
        torch.testing.assert_close(w2, w1, rtol=0, atol=1e-6, msg=f"weight {name}")
    h1, h2 = (pd.read_csv(runs / n / "history.csv") for n in ("one", "two"))
    val_cols = [c for c in h1.columns if c.startswith("val_")]
    assert "val_loss" in val_cols and any(c.startswith("val_psnr") for c in val_cols)
    for col in [*val_cols, "train_loss"]:
        assert h2[col].iloc[0] == pytest.approx(h1[col].iloc[0], rel=1e-5), col
