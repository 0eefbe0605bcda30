"""Every sbatch/ stage script on the real test cluster, submitted as the README writes it (``PRESET=cpu-tiny``,
the scripts' own #SBATCH resources), each ending COMPLETED in sacct with its outputs checked:

* X-ray -> CT chain: ``prep_drr.sh`` (array) -> ``stage1_64.sh`` -> ``refine_256.sh`` and ``direct_256.sh``
  (both ``afterok`` stage 1) -> ``aggregate.sh``: the four-model comparison table;
* pix2pix chain: ``prep_nifti_pairs.sh`` (array) -> ``pix2pix_phase.sh`` with ``CONFIG`` -> ``aggregate.sh``;
  re-submitting the finished run with another ``CONFIG`` resumes from the run's saved config.json;
* ``RESUBMIT=1 fbp_unet.sh`` with ``--time``/``--cpus-per-task`` on the command line: the next segment's job
  keeps them.

The chains run concurrently (the cluster's 4 CPUs are shared: the scripts ask for 4 each, so SLURM runs them
one after the other); every wait is bounded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from tests.slurm.conftest import SlurmCluster, TinyLodopab, make_checkout, outcome, run_concurrently

CHAIN_TIMEOUT_S = 480.0
ROOTS = {"CTPIPE_DATA": "data", "CTPIPE_RUNS": "runs", "CTPIPE_RESULTS": "results", "PRESET": "cpu-tiny"}
AFTEROK = "--kill-on-invalid-dep=yes"
START_LINE = re.compile(r"start (\w+): host=\S+ rank=0/1 local_rank=0 device=cpu \(CPU\) amp=none")


def _logs(repo: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted((repo / "logs").glob("*.out")))


def _submitter(cluster: SlurmCluster, repo: Path) -> Callable[..., str]:
    def submit(script: str, *args: str, script_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
        return cluster.sbatch(script, *args, env={**ROOTS, **(env or {})}, script_args=script_args, cwd=repo)

    return submit


@pytest.fixture(scope="module")
def chains(slurm_cluster: SlurmCluster, slurm_tiny_lodopab: TinyLodopab,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Submit the three chains, wait for each (in threads); returns {name: what its check returned, or the
    error that ended it} (see :func:`outcome`)."""
    from ctpipe.data.synthetic_ct import write_synthetic_ct
    from ctpipe.data.synthetic_phases import write_synthetic_phases

    root = tmp_path_factory.mktemp("stage_scripts")

    def xray2ct() -> Path:
        repo = make_checkout(root / "xray2ct")
        write_synthetic_ct(repo / "data" / "xray2ct" / "ct", 8, size=32, spacing_mm=10.0, seed=3)
        submit = _submitter(slurm_cluster, repo)
        prep = submit("sbatch/prep_drr.sh", "--array=0-1", script_args=("--xray-size", "32", "--volume-sizes", "16,32"))
        s1 = submit("sbatch/stage1_64.sh", AFTEROK, f"--dependency=afterok:{prep}")
        refine = submit("sbatch/refine_256.sh", AFTEROK, f"--dependency=afterok:{s1}")
        direct = submit("sbatch/direct_256.sh", AFTEROK, f"--dependency=afterok:{s1}",
                        env={"STAGE1_CHECKPOINT": "runs/stage1_64/default/checkpoints/best.pt"})
        agg = submit("sbatch/aggregate.sh", AFTEROK, f"--dependency=afterok:{refine}:{direct}",
                     script_args=("runs", "results/xray2ct"))
        assert slurm_cluster.wait(agg, CHAIN_TIMEOUT_S) == "COMPLETED", _logs(repo)
        states = {j: slurm_cluster.sacct_states(j) for j in (prep, s1, refine, direct, agg)}
        assert all(set(s.values()) == {"COMPLETED"} for s in states.values()), states
        assert len(states[prep]) == 2
        return repo

    def phases() -> tuple[Path, str]:
        repo = make_checkout(root / "phases")
        write_synthetic_phases(repo / "data" / "phases" / "raw", 6, size=64, n_slices=16)
        config = json.loads((Path(__file__).parents[2] / "ctpipe" / "configs" / "pix2pix_phase.json").read_text())
        config.setdefault("loss", {})["lambda_l1"] = 77.0  # the packaged file lists only its deltas
        (repo / "mine.json").write_text(json.dumps(config))
        submit = _submitter(slurm_cluster, repo)
        prep = submit("sbatch/prep_nifti_pairs.sh", "--array=0-1",
                      script_args=("--size", "64", "--split-fractions", "0.6,0.2,0.2"))
        train = submit("sbatch/pix2pix_phase.sh", AFTEROK, f"--dependency=afterok:{prep}", env={"CONFIG": "mine.json"})
        agg = submit("sbatch/aggregate.sh", AFTEROK, f"--dependency=afterok:{train}",
                     script_args=("runs", "results/phases"))
        assert slurm_cluster.wait(agg, CHAIN_TIMEOUT_S) == "COMPLETED", _logs(repo)
        for job in (prep, train):
            assert set(slurm_cluster.sacct_states(job).values()) == {"COMPLETED"}
        # the same run again with another CONFIG and PRESET: a resume, from the saved config.json (neither is read)
        again = submit("sbatch/pix2pix_phase.sh", env={"CONFIG": "no-such-config.json", "PRESET": "no-such-preset"})
        assert slurm_cluster.wait(again, CHAIN_TIMEOUT_S) == "COMPLETED", _logs(repo)
        return repo, again

    def fbp_unet() -> tuple[Path, tuple[str, str]]:
        repo = make_checkout(root / "fbp_unet")
        submit = _submitter(slurm_cluster, repo)
        first = submit("sbatch/fbp_unet.sh", "--time=9", "--cpus-per-task=1",
                       env={"RESUBMIT": "1", "LODOPAB_SHARDS": str(slurm_tiny_lodopab.shards)})
        assert slurm_cluster.wait(first, CHAIN_TIMEOUT_S) == "COMPLETED", _logs(repo)
        log = (repo / "logs" / f"fbp_unet-{first}.out").read_text()
        found = re.search(r"Submitted batch job (\d+)", log)
        assert found, log
        second = found.group(1)
        assert slurm_cluster.wait(second, CHAIN_TIMEOUT_S) == "COMPLETED", _logs(repo)
        return repo, (first, second)

    return run_concurrently({"xray2ct": xray2ct, "phases": phases, "fbp_unet": fbp_unet}, CHAIN_TIMEOUT_S + 120)


def test_xray2ct_chain_completes_with_the_comparison_table(chains: dict[str, object]) -> None:
    repo = outcome(chains, "xray2ct")
    assert json.loads((repo / "data" / "xray2ct" / "shards" / "manifest.json").read_text())["shards"]
    for stage in ("stage1_64", "refine_256", "direct_256"):
        run = repo / "runs" / stage / "default"
        saved = json.loads((run / "config.json").read_text())
        assert saved["model"]["preset"] == "tiny" and saved["train"]["device"] == "cpu"  # PRESET on first start
        assert (run / "checkpoints" / "best.pt").is_file() and (run / "eval").is_dir()
    summary = pd.read_csv(repo / "results" / "xray2ct" / "summary.csv")
    val = summary[summary.split == "validation"]
    assert {"stage1_64", "stage1_64_trilinear", "refine_256", "direct_256"} <= set(val.model)
    logs = _logs(repo)
    assert {m.group(1) for m in START_LINE.finditer(logs)} == {"stage1_64", "refine_256", "direct_256"}


def test_pix2pix_chain_uses_config_and_a_rerun_resumes_from_the_saved_config(chains: dict[str, object]) -> None:
    repo, again_job = outcome(chains, "phases")
    run = repo / "runs" / "pix2pix_phase" / "default"
    saved = json.loads((run / "config.json").read_text())
    assert saved["loss"]["lambda_l1"] == 77.0  # CONFIG was read on the first start
    assert saved["model"]["ngf"] == 8          # and PRESET=cpu-tiny
    assert (run / "eval" / "test").is_dir()
    assert (repo / "results" / "phases" / "summary.csv").is_file()
    again = (repo / "logs" / f"pix2pix_phase-{again_job}.out").read_text()
    assert "resuming runs/pix2pix_phase/default from its saved config.json" in again
    assert json.loads((run / "config.json").read_text()) == saved


def test_fbp_unet_resubmission_keeps_the_command_line_options(chains: dict[str, object],
                                                             slurm_cluster: SlurmCluster) -> None:
    repo, (first, second) = outcome(chains, "fbp_unet")
    rows = {}
    for job in (first, second):
        out = slurm_cluster.run("sacct", "-n", "-P", "-X", "-j", job, "-o", "Timelimit,Partition,ReqCPUS,JobName")
        rows[job] = out.strip().splitlines()[-1].split("|")
    assert rows[second] == rows[first] == ["00:09:00", "debug", "1", "fbp_unet"]
    events_file = repo / "runs" / "fbp_unet" / "default" / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    ends = [e["status"] for e in events if e["event"] == "fit_end"]
    assert ends == ["segment_done", "completed"]  # one segment per job, the second resumed the first
    assert (repo / "runs" / "fbp_unet" / "default" / "eval").is_dir()
