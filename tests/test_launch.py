"""ctpipe.launch without a cluster: the exact sbatch text submitit generates for our Resources (golden files),
dependencies, sweep expansion and run folders.

Regenerate the golden files after an intended change with ``CTPIPE_UPDATE_GOLDEN=1 pytest tests/test_launch.py``
and review the diff.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import submitit
from submitit.slurm.slurm import _make_sbatch_string

from ctpipe.launch import (
    Resources,
    TrainJob,
    dependency_ids,
    expand_sweep,
    make_executor,
    slurm_parameters,
    sweep_run_dir,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
GPU_JOB = Resources(timeout_min=90, nodes=2, tasks_per_node=4, gpus_per_node=4, cpus_per_task=8, mem_gb=64,
                    partition="gpu", account="proj42", job_name="fbp_window")


@pytest.fixture
def slurm_executor_without_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit refuses to build a SlurmExecutor when ``srun`` is not on PATH; the text needs no cluster."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))


def _normalise(text: str, folder: Path) -> str:
    """Replace the volatile parts (the tmp folder, this interpreter's path) with placeholders."""
    return text.replace(str(folder), "{folder}").replace(shlex.quote(sys.executable), "{python}")


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CTPIPE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with CTPIPE_UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(), f"sbatch text differs from {path} (CTPIPE_UPDATE_GOLDEN=1 to accept)"


def _inner(executor: Any) -> Any:
    return executor._executor  # the SlurmExecutor behind AutoExecutor


@pytest.mark.usefixtures("slurm_executor_without_cluster")
def test_trainjob_sbatch_text_matches_golden(tmp_path: Path) -> None:
    folder = tmp_path / "submitit"
    executor = make_executor("slurm", folder, GPU_JOB, after=["12_0", "12_1", "15"])
    inner = _inner(executor)
    text = _normalise(inner._make_submission_file_text(inner._submitit_command_str, "uid"), folder)
    _check_golden("trainjob_gpu_sbatch.txt", text)
    # what the golden file pins down, spelled out
    lines = text.splitlines()
    for flag in ("--requeue", "--signal=USR2@120", "--dependency=afterok:12:15", "--kill-on-invalid-dep=yes",
                 "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8", "--time=90",
                 "--partition=gpu", "--account=proj42", "--open-mode=append", "--job-name=fbp_window"):
        assert f"#SBATCH {flag}" in lines
    assert inner.max_num_timeout == GPU_JOB.max_num_timeout


@pytest.mark.usefixtures("slurm_executor_without_cluster")
def test_sweep_array_sbatch_text_matches_golden(tmp_path: Path) -> None:
    """A sweep of 3 points becomes one array (%A_%a log names, throttled by array_parallelism)."""
    folder = tmp_path / "submitit"
    res = Resources(timeout_min=30, cpus_per_task=2, partition=None, account=None, array_parallelism=2,
                    job_name="fbp_window")
    inner = _inner(make_executor("slurm", folder, res))
    text = _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder,
                               **{**inner.parameters, "map_count": 3})
    text = _normalise(text, folder)
    _check_golden("trainjob_sweep_array_sbatch.txt", text)
    assert "#SBATCH --array=0-2%2" in text.splitlines()
    assert "--dependency" not in text and "--partition" not in text


def test_slurm_parameters_without_dependency_are_requeueable() -> None:
    params = slurm_parameters(Resources(partition=None, account=None))
    assert params["slurm_additional_parameters"] == {"requeue": True}
    assert "slurm_dependency" not in params


def test_dependency_ids_collapse_array_tasks() -> None:
    class FakeJob:  # anything with a job_id, like submitit.Job
        def __init__(self, job_id: str) -> None:
            self.job_id = job_id

    assert dependency_ids([FakeJob("7_0"), FakeJob("7_1"), "9", 11]) == ["7", "9", "11"]
    with pytest.raises(ValueError, match="expected a SLURM job id"):
        dependency_ids(["local-123"])


def test_dependencies_need_slurm(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need the slurm executor"):
        make_executor("local", tmp_path, Resources(), after=["12"])


def test_expand_sweep_is_the_cartesian_product_in_order() -> None:
    assert expand_sweep([]) == [[]]
    assert expand_sweep(["optim.lr=1e-2,3e-3", "data.batch_size=4,8"]) == [
        ["optim.lr=1e-2", "data.batch_size=4"], ["optim.lr=1e-2", "data.batch_size=8"],
        ["optim.lr=3e-3", "data.batch_size=4"], ["optim.lr=3e-3", "data.batch_size=8"],
    ]
    with pytest.raises(ValueError, match="expected key=v1,v2"):
        expand_sweep(["optim.lr"])


def test_sweep_run_dirs_are_stable_and_distinct(tmp_path: Path) -> None:
    points = expand_sweep(["optim.lr=1e-2,3e-3", "model.padding=true,false"])
    dirs = [sweep_run_dir(tmp_path, p) for p in points]
    assert len(set(dirs)) == len(points)  # no two points share a run folder
    again = expand_sweep(["optim.lr=1e-2,3e-3", "model.padding=true,false"])
    assert dirs == [sweep_run_dir(tmp_path, p) for p in again]
    assert sweep_run_dir(tmp_path, []) == tmp_path
    assert sweep_run_dir(tmp_path, ["data.root=a/b"]) == tmp_path / "data.root-a-b"


def test_trainjob_checkpoint_resubmits_the_same_run() -> None:
    job = TrainJob("fbp_window", "runs/x", ["optim.lr=1e-3"], None, False)
    delayed = job.checkpoint()
    again = delayed.function
    assert isinstance(again, TrainJob) and again is not job
    assert (again.stage, again.run_dir, again.overrides) == ("fbp_window", "runs/x", ["optim.lr=1e-3"])
