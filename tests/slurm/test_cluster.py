"""The test cluster is real and usable: sbatch, arrays, accounting, submitit, 2-rank gloo DDP, requeue.

Also the site settings of ``sbatch/_site.sh`` (precedence, GPU flag syntax, the DDP rendezvous it exports
inside a real job).  Every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import submitit

from tests.slurm.conftest import CLUSTER_SH, SlurmCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
SITE_SH = REPO / "sbatch" / "_site.sh"
JOB_TIMEOUT_S = 90.0


def _site(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash after sourcing sbatch/_site.sh, outside any job (SLURM_* removed)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CTPIPE_", "SBATCH_"))}
    base["CTPIPE_VENV"] = sys.prefix
    full = f"set -euo pipefail\nsource {SITE_SH}\n{script}"
    return subprocess.run(["bash", "-c", full], env={**base, **(env or {})}, capture_output=True, text=True, timeout=30)


def test_scripts_parse() -> None:
    for script in (CLUSTER_SH, SITE_SH):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr


def test_site_precedence_env_over_file_over_default(tmp_path: Path) -> None:
    site = tmp_path / "site.env"
    site.write_text('# comment\nexport CTPIPE_PARTITION="gpu-long"\nCTPIPE_ACCOUNT=proj42\nCTPIPE_GPU_TYPE=\n')
    out = _site(
        'echo "$CTPIPE_PARTITION|$CTPIPE_ACCOUNT|$SBATCH_PARTITION|$CTPIPE_GPU_FLAG|$CTPIPE_PYTHON"',
        {"CTPIPE_SITE_FILE": str(site), "CTPIPE_ACCOUNT": "from-env"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"gpu-long|from-env|gpu-long|gres|{sys.prefix}/bin/python"


def test_site_file_unknown_key_fails_with_location(tmp_path: Path) -> None:
    site = tmp_path / "site.env"
    site.write_text("CTPIPE_PARTITON=typo\n")
    out = _site("echo unreachable", {"CTPIPE_SITE_FILE": str(site)})
    assert out.returncode != 0
    assert f"{site}:1: unknown key CTPIPE_PARTITON" in out.stderr
    assert "unreachable" not in out.stdout


@pytest.mark.parametrize(
    ("flag", "gpu_type", "expected"),
    [
        ("gres", "", "--gres=gpu:4"),
        ("gres", "a100", "--gres=gpu:a100:4"),
        ("gpus-per-node", "", "--gpus-per-node=4"),
        ("gpus", "h100", "--gpus=h100:4"),
        ("none", "", ""),
    ],
)
def test_site_gpu_flag_syntax(flag: str, gpu_type: str, expected: str) -> None:
    out = _site(
        'ctpipe_gpu_flag 4; echo "zero:[$(ctpipe_gpu_flag 0)]"',
        {"CTPIPE_GPU_FLAG": flag, "CTPIPE_GPU_TYPE": gpu_type},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ([expected] if expected else []) + ["zero:[]"]


def test_site_sbatch_args_and_bad_gpu_flag() -> None:
    out = _site("ctpipe_sbatch_args 2", {"CTPIPE_PARTITION": "p", "CTPIPE_ACCOUNT": "a", "CTPIPE_GPU_FLAG": "gpus"})
    assert out.stdout.splitlines() == ["--partition=p", "--account=a", "--gpus=2"]
    bad = _site("true", {"CTPIPE_GPU_FLAG": "gpu"})
    assert bad.returncode != 0 and "CTPIPE_GPU_FLAG=gpu" in bad.stderr


def test_cluster_is_idle_and_status_ok(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.run("sinfo", "-h", "-o", "%P %c").split() == ["debug*", "4"]
    status = subprocess.run(
        ["bash", str(CLUSTER_SH), "status", str(slurm_cluster.state_dir)], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "slurmdbd: running" in status.stdout


def test_sbatch_job_writes_file_and_sacct_completed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = f"#!/bin/bash\necho \"job $SLURM_JOB_ID on $SLURMD_NODENAME\" > {tmp_path}/out.txt\n"
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/slurm-%j.out", "--time=5")
    assert slurm_cluster.wait(job, JOB_TIMEOUT_S) == "COMPLETED"
    assert (tmp_path / "out.txt").read_text().split()[:2] == ["job", job]


def test_failing_job_is_recorded_failed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch("#!/bin/bash\nexit 3\n", f"--output={tmp_path}/slurm-%j.out")
    assert slurm_cluster.wait(job, JOB_TIMEOUT_S) == "FAILED"


def test_array_job_writes_three_files(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = f"#!/bin/bash\necho $SLURM_ARRAY_TASK_ID > {tmp_path}/task-$SLURM_ARRAY_TASK_ID.txt\n"
    job = slurm_cluster.sbatch(script, "--array=0-2", f"--output={tmp_path}/slurm-%A_%a.out")
    assert slurm_cluster.wait(job, JOB_TIMEOUT_S) == "COMPLETED"
    assert sorted(slurm_cluster.sacct_states(job)) == [f"{job}_{i}" for i in range(3)]
    assert sorted(p.read_text().strip() for p in tmp_path.glob("task-*.txt")) == ["0", "1", "2"]


def _wait_submitit(job: submitit.Job, timeout: float) -> None:
    wait_for(lambda: job.done() and job.state not in ("UNKNOWN", "PENDING", "RUNNING"), timeout, f"submitit job {job}")


def test_submitit_job_returns_result_and_state(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1)
    job = executor.submit(lambda x: (os.environ["SLURM_JOB_ID"], x * 7), 6)
    _wait_submitit(job, JOB_TIMEOUT_S)
    assert job.result() == (job.job_id, 42)
    assert job.state == "COMPLETED"


def test_submitit_two_rank_gloo_all_reduce(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    def all_reduce_rank_plus_one() -> tuple[int, int, float]:
        import torch
        import torch.distributed as dist
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment().export()
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
        value = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(value)
        dist.destroy_process_group()
        return env.rank, env.world_size, float(value.item())

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=5, nodes=1, tasks_per_node=2, cpus_per_task=1)
    job = executor.submit(all_reduce_rank_plus_one)
    _wait_submitit(job, JOB_TIMEOUT_S)
    assert sorted(job.results()) == [(0, 2, 3.0), (1, 2, 3.0)]
    assert job.state == "COMPLETED"


DDP_SCRIPT = """\
import os, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="env://")
value = torch.tensor([float(2 ** dist.get_rank())])
dist.all_reduce(value)
rank = os.environ["RANK"]
with open(os.path.join(os.environ["OUT_DIR"], f"rank{rank}.txt"), "w") as f:
    f.write(f"{rank} {os.environ['LOCAL_RANK']} {os.environ['WORLD_SIZE']} {os.environ['MASTER_ADDR']} {value.item()}")
dist.destroy_process_group()
"""


def test_site_srun_two_rank_gloo_all_reduce(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    script = textwrap.dedent(
        f"""\
        #!/bin/bash
        #SBATCH --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=5
        set -euo pipefail
        source "$CTPIPE_REPO/sbatch/_site.sh"
        ctpipe_site_summary
        ctpipe_srun python {tmp_path}/ddp.py
        """
    )
    env = {"CTPIPE_REPO": str(REPO), "CTPIPE_VENV": sys.prefix, "OUT_DIR": str(tmp_path), "RANK": "leaked"}
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/slurm-%j.out", env=env)
    state = slurm_cluster.wait(job, JOB_TIMEOUT_S)
    log = next(tmp_path.glob("slurm-*.out")).read_text()
    assert state == "COMPLETED", log
    node = slurm_cluster.run("sinfo", "-h", "-o", "%n").strip()
    assert f"MASTER_PORT={20000 + int(job) % 20000}" in log
    # ranks 0 and 1 contribute 2**0 + 2**1 = 3
    assert (tmp_path / "rank0.txt").read_text() == f"0 0 2 {node} 3.0"
    assert (tmp_path / "rank1.txt").read_text() == f"1 1 2 {node} 3.0"


PREEMPT_SCRIPT = """\
#!/bin/bash
#SBATCH --requeue --signal=B:USR1@60 --open-mode=append --time=10
echo "start restart=${{SLURM_RESTART_COUNT:-0}}" >> {out}/marker.txt
if [[ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ]]; then echo resumed; exit 0; fi
trap 'echo "got USR1" >> {out}/marker.txt; scontrol requeue "$SLURM_JOB_ID"; exit 0' USR1
touch {out}/ready
for _ in $(seq 120); do sleep 1 & wait $!; done
exit 1
"""


def test_preempted_job_requeues_and_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = PREEMPT_SCRIPT.format(out=tmp_path)
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/slurm-%j.out")
    wait_for((tmp_path / "ready").exists, JOB_TIMEOUT_S, f"job {job} to start")
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    assert slurm_cluster.wait(job, JOB_TIMEOUT_S) == "COMPLETED"
    lines = (tmp_path / "marker.txt").read_text().splitlines()
    assert lines == ["start restart=0", "got USR1", "start restart=1"]
    assert "resumed" in (tmp_path / f"slurm-{job}.out").read_text()


PREEMPT_STEP = """\
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["OUT_DIR"])
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
with open(out / "marker.txt", "a") as f:
    f.write(f"step restart={restart}\\n")
if restart >= 1:
    sys.exit(0)
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(3))  # what the trainer does after checkpointing
(out / "ready").touch()
time.sleep(120)
sys.exit(1)
"""


def test_site_requeue_convention_usr2_to_step(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """--signal=USR2 reaches the srun step; its exit code 3 makes ctpipe_requeue_if_preempted requeue the job."""
    (tmp_path / "step.py").write_text(PREEMPT_STEP)
    script = textwrap.dedent(
        f"""\
        #!/bin/bash
        #SBATCH --requeue --signal=USR2@60 --open-mode=append --time=10
        set -euo pipefail
        source "$CTPIPE_REPO/sbatch/_site.sh"
        ctpipe_srun python {tmp_path}/step.py || ctpipe_requeue_if_preempted $?
        echo "finished restart=$SLURM_RESTART_COUNT"
        """
    )
    env = {"CTPIPE_REPO": str(REPO), "CTPIPE_VENV": sys.prefix, "OUT_DIR": str(tmp_path)}
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/slurm-%j.out", env=env)
    wait_for((tmp_path / "ready").exists, JOB_TIMEOUT_S, f"job {job} to start its step")
    slurm_cluster.run("scancel", "--signal=USR2", job)  # steps only, like --signal=USR2@N at the time limit
    assert slurm_cluster.wait(job, JOB_TIMEOUT_S) == "COMPLETED"
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert (tmp_path / "marker.txt").read_text().splitlines() == ["step restart=0", "step restart=1"], log
    assert "preempted (exit 3, restart 0): requeueing" in log and "finished restart=1" in log
