"""`ctpipe submit pipeline xray2ct` and `ctpipe submit pipeline phases` on the real cluster: every job of the DAG
(prep array, training steps, aggregate, example inference) ends COMPLETED in sacct, each step started after the
ones it needs; a failed training step cancels everything after it (no job left PENDING)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.conftest import SlurmCluster, outcome, run_concurrently

JOB_TIMEOUT_S = 420.0
ROOTS = ("CTPIPE_DATA", "CTPIPE_RUNS", "CTPIPE_RESULTS")
COMMON = ["--executor", "slurm", "--preset", "cpu-tiny", "--prep-tasks", "2", "--cpus-per-task", "1",
          "--timeout-min", "15", "train.max_steps_per_epoch=2"]
CHAINS = {
    "xray2ct": ["xray2ct", "--n-synth", "8", "--synth-pixels", "32", *COMMON],
    "phases": ["phases", "--n-synth", "6", *COMMON, "train.epochs=1"],
    "broken": ["xray2ct", "--name", "broken", "--n-synth", "4", "--synth-pixels", "32", *COMMON,
               "data.volume_field=volume_99"],  # every training step fails at start-up: stage 1 FAILED
}


def _submit(cluster: SlurmCluster, root: Path, argv: list[str]) -> dict:
    env = {k: v for k, v in cluster.env.items() if k not in ROOTS}
    proc = subprocess.run([sys.executable, "-m", "ctpipe.cli", "submit", "pipeline", *argv], cwd=root, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    name = argv[argv.index("--name") + 1] if "--name" in argv else argv[0]
    submitted = json.loads((root / "results" / name / "pipeline.json").read_text())
    for ids in [submitted["prep"], *submitted["train"].values(), [submitted["aggregate"]]]:
        assert f"job {ids[0].split('_')[0]}" in proc.stdout  # the ids are printed
    return submitted


def _all_ids(submitted: dict) -> dict[str, list[str]]:
    steps = {"prep": submitted["prep"], **submitted["train"], "aggregate": [submitted["aggregate"]]}
    if submitted.get("infer"):
        steps["infer"] = [submitted["infer"]]
    return steps


def _logs(root: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in sorted(root.glob("runs/**/submitit/*_log.err")))


@pytest.fixture(scope="module")
def pipelines(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    def run(name: str) -> tuple:
        root = tmp_path_factory.mktemp(name)
        submitted = _submit(slurm_cluster, root, CHAINS[name])
        last = submitted.get("infer") or submitted["aggregate"]
        final = slurm_cluster.wait(last, JOB_TIMEOUT_S)
        states = {step: {j: slurm_cluster.sacct_states(j.split("_")[0]).get(j, "?") for j in ids}
                  for step, ids in _all_ids(submitted).items()}
        return root, submitted, final, states

    return run_concurrently({name: functools.partial(run, name) for name in CHAINS}, JOB_TIMEOUT_S + 240)


def test_xray2ct_pipeline_completes_every_job(pipelines: dict[str, object]) -> None:
    root, submitted, final, states = outcome(pipelines, "xray2ct")
    assert final == "COMPLETED", _logs(root)
    assert set(states) == {"prep", "stage1_64", "refine_256", "direct_256", "aggregate", "infer"}
    assert all(s == "COMPLETED" for step in states.values() for s in step.values()), states
    assert len(states["prep"]) == 2
    assert (root / "results" / "xray2ct" / "inference" / "example.nii.gz").is_file()
    assert (root / "results" / "xray2ct" / "summary.csv").is_file()


def test_phases_pipeline_completes_every_job(pipelines: dict[str, object]) -> None:
    root, submitted, final, states = outcome(pipelines, "phases")
    assert final == "COMPLETED", _logs(root)
    assert all(s == "COMPLETED" for step in states.values() for s in step.values()), states
    assert set(states) == {"prep", "pix2pix_phase", "aggregate", "infer"}
    assert (root / "results" / "phases" / "inference" / "metrics.csv").is_file()


def test_a_failed_training_step_cancels_the_rest_of_the_dag(pipelines: dict[str, object]) -> None:
    root, submitted, final, states = outcome(pipelines, "broken")
    assert set(states["prep"].values()) == {"COMPLETED"}
    assert set(states["stage1_64"].values()) == {"FAILED"}
    for step in ("refine_256", "direct_256", "aggregate", "infer"):
        assert set(states[step].values()) == {"CANCELLED"}, states
    assert final == "CANCELLED"


def test_prep_array_longer_than_max_array_size_is_split(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """20 raw file pairs, --prep-tasks 20 on a cluster with MaxArraySize=16 (tests/slurm/cluster.sh): two arrays
    (16 + 4 tasks, global task indices), all COMPLETED, one shard per pair; training waits for both."""
    from ctpipe.pipeline import max_array_size

    limit = max_array_size()
    assert limit == 16, "tests/slurm/cluster.sh sets MaxArraySize=16"
    submitted = _submit(slurm_cluster, tmp_path, ["lodopab", "--n-synth", "40", "--synth-pixels", "32",
                                                  "--synth-angles", "24", "--synth-per-file", "2", "--prep-tasks",
                                                  "20", "--executor", "slurm", "--cpus-per-task", "1",
                                                  "--timeout-min", "15", "train.epochs=1", "train.device=cpu"])
    arrays = sorted({j.split("_")[0] for j in submitted["prep"]}, key=int)
    assert len(arrays) == 2 and len(submitted["prep"]) == 20
    assert slurm_cluster.wait(submitted["aggregate"], JOB_TIMEOUT_S) == "COMPLETED", _logs(tmp_path)
    states = {**slurm_cluster.sacct_states(arrays[0]), **slurm_cluster.sacct_states(arrays[1])}
    assert len(states) == 20 and set(states.values()) == {"COMPLETED"}
    manifest = json.loads((tmp_path / "data" / "lodopab" / "shards" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 20
