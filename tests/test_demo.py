"""``make demo`` at a reduced size, and the job follower that keeps every demo from going silent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import submitit

from ctpipe.demo import run_demo
from ctpipe.demo_common import follow_jobs


def _sleepy(seconds: float) -> str:
    print("job says hello", flush=True)
    time.sleep(seconds)
    print("job says bye", flush=True)
    return "ok"


def test_follow_jobs_forwards_log_lines_and_speaks_while_the_job_is_quiet(tmp_path: Path) -> None:
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    job = executor.submit(_sleepy, 2.5)
    said: list[str] = []
    follow_jobs([job], said.append, heartbeat_s=0.8, poll_s=0.1, keep=lambda line: "submitit" not in line)
    assert job.result() == "ok"
    assert "  | job says hello" in said and "  | job says bye" in said
    assert said.index("  | job says hello") < said.index("  | job says bye")
    still = [line for line in said if line.startswith("  still running after")]
    assert still and str(job.paths.stderr) in still[0]


@pytest.mark.slow
def test_demo_pipeline_at_reduced_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = run_demo(tmp_path, n=40, epochs=1)
    printed = capsys.readouterr().out
    results = tmp_path / "results" / "demo"
    lines = printed.splitlines()
    assert lines[0] == f"[ctpipe demo] log: {results / 'demo.log'}; outputs: {results}"
    assert any("| " in line and "[ctpipe.train]" in line for line in lines)  # the job's training log, forwarded
    assert lines[-1] == f"[ctpipe demo] demo log: {results / 'demo.log'}"
    assert {"summary", "per_sample", "report_html", "distributions_png"} <= set(outputs)
    for name, path in outputs.items():
        assert path.is_file() and f"{name}: {path}" in printed
    assert "[ctpipe.train]" in (results / "demo.log").read_text()


def test_heartbeat_speaks_while_an_in_process_step_is_quiet() -> None:
    from ctpipe.demo_common import heartbeat

    said: list[str] = []
    with heartbeat(said.append, "training", interval_s=0.2):
        time.sleep(0.9)
    assert len(said) >= 2 and said[0].startswith("  still training after")
    count = len(said)
    time.sleep(0.4)
    assert len(said) == count  # stops with the block
