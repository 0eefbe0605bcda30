"""A real single-node SLURM cluster for the tests under ``tests/slurm`` (all marked ``slurm``).

The session fixture ``slurm_cluster`` runs ``tests/slurm/cluster.sh up`` (which installs the Debian packages
when missing and starts munged, MariaDB, slurmdbd, slurmctld and slurmd as root) and yields a
:class:`SlurmCluster` with small, always-bounded helpers.  ``CTPIPE_SLURM_REUSE=1`` reuses a cluster that is
already healthy without touching it; the fixture stops the cluster at the end only if it was not running
before the session.  Not being root, or lacking both SLURM and apt-get, is a test *failure*, not a skip:
CI runs these tests as root.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

CLUSTER_SH = Path(__file__).resolve().with_name("cluster.sh")
DEFAULT_STATE_DIR = Path(os.environ.get("CTPIPE_SLURM_STATE", "/tmp/ctpipe-slurm"))
UP_TIMEOUT_S = 900.0  # includes apt-get install on a brand-new machine (about a minute here)
DOWN_TIMEOUT_S = 180.0
COMMAND_TIMEOUT_S = 60.0
POLL_S = 0.5
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected below this folder with ``slurm`` (the hook sees the whole session)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slurm)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 0.2 s until it is truthy; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """Handle on the running test cluster: its state dir and the environment its client commands need."""

    state_dir: Path
    env: Mapping[str, str]

    def run(self, *cmd: str, timeout: float = COMMAND_TIMEOUT_S, input: str | None = None) -> str:
        """Run a SLURM client command (sinfo, scontrol, ...) and return its stdout; raise with stderr on failure."""
        proc = subprocess.run(
            list(cmd), env=dict(self.env), input=input, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def sbatch(self, script: str | Path, *args: str, env: Mapping[str, str] | None = None,
               script_args: Sequence[str] = (), cwd: Path | None = None) -> str:
        """Submit ``script`` (a file path, or the script text itself starting with ``#!``) with sbatch options ``args``.

        ``env`` is added to the cluster environment of the submitting process (sbatch exports it to the job).
        ``script_args`` follow the script path (the script's "$@"); ``cwd`` is the submit folder (the job's
        SLURM_SUBMIT_DIR and working folder; a relative script path is resolved there).
        Returns the job id (for an array, the array's id).
        """
        full_env = {**self.env, **(env or {})}
        if isinstance(script, str) and script.startswith("#!"):
            cmd, stdin = ["sbatch", "--parsable", *args], script
        else:
            path = Path(script)
            if not (Path(cwd or ".") / path).is_file():
                raise FileNotFoundError(f"sbatch script {path} does not exist (pass a path or text starting with #!)")
            cmd, stdin = ["sbatch", "--parsable", *args, str(path), *script_args], None
        proc = subprocess.run(
            cmd, env=full_env, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=cwd
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def sacct_states(self, job_id: str) -> dict[str, str]:
        """Accounting state of each allocation of ``job_id`` (array tasks as ``ID_i``); empty until recorded."""
        out = self.run("sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State")
        states: dict[str, str] = {}
        for line in out.splitlines():
            if "|" in line:
                jid, state = line.split("|", 1)
                states[jid] = state.split()[0] if state.split() else state  # "CANCELLED by 0" -> CANCELLED
        return states

    def wait(self, job_id: str, timeout: float) -> str:
        """Wait until every allocation of ``job_id`` reached a final state; return it (``A,B`` when they differ).

        On timeout the job is cancelled and TimeoutError carries ``scontrol show job`` and the slurmctld log tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            states = self.sacct_states(job_id) if not self._in_queue(job_id) else {}
            # Accounting records of split-off array tasks can reach slurmdbd after the last task's record:
            # wait until sacct holds one final record per allocation slurmctld knows about.
            expected = self._allocations(job_id)
            if states and all(s in FINAL_STATES for s in states.values()) and len(states) >= expected:
                return ",".join(sorted(set(states.values())))
            if time.monotonic() > deadline:
                raise TimeoutError(self._timeout_report(job_id, states, timeout))
            time.sleep(POLL_S)

    def _in_queue(self, job_id: str) -> bool:
        """Whether any allocation of ``job_id`` is still pending, running or completing."""
        proc = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%i"],
            env=dict(self.env), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        )
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def _allocations(self, job_id: str) -> int:
        """How many allocations (array tasks) slurmctld lists for ``job_id``; 0 once it forgot the job."""
        proc = subprocess.run(
            ["scontrol", "-o", "show", "job", str(job_id)],
            env=dict(self.env), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        )
        return sum(line.startswith("JobId=") for line in proc.stdout.splitlines()) if proc.returncode == 0 else 0

    def _timeout_report(self, job_id: str, states: Mapping[str, str], timeout: float) -> str:
        detail = subprocess.run(
            ["scontrol", "show", "job", str(job_id)], env=dict(self.env), capture_output=True, text=True, timeout=30
        ).stdout
        subprocess.run(["scancel", str(job_id)], env=dict(self.env), capture_output=True, timeout=30)
        log = self.state_dir / "log" / "slurmctld.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else "(no log)"
        return (
            f"job {job_id} not finished after {timeout:.0f} s (sacct: {dict(states)}); cancelled it.\n"
            f"scontrol show job:\n{detail}\nslurmctld.log tail:\n{tail}"
        )


def _cluster_sh(action: str, state_dir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["bash", str(CLUSTER_SH), action, str(state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{CLUSTER_SH} {action} did not finish within {timeout:.0f} s: {exc.stderr!r}")


def _require_root_and_packages() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the SLURM tests start a real cluster and must run as root (CI does); "
            "run them with sudo, or deselect them with -m 'not slurm' on a workstation"
        )
    if shutil.which("slurmctld", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None and not shutil.which(
        "apt-get"
    ):
        pytest.fail("SLURM is not installed and apt-get is not available to install it (see tests/slurm/cluster.sh)")


def _cluster_env(state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SLURM_CONF"] = str(state_dir / "slurm.conf")
    if "/usr/sbin" not in env.get("PATH", "").split(":"):
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node cluster (partition ``debug``, 4 CPUs, accounting on) for the whole session."""
    _require_root_and_packages()
    state_dir = DEFAULT_STATE_DIR
    was_up = _cluster_sh("status", state_dir, COMMAND_TIMEOUT_S).returncode == 0
    if not (was_up and os.environ.get("CTPIPE_SLURM_REUSE") == "1"):
        up = _cluster_sh("up", state_dir, UP_TIMEOUT_S)
        if up.returncode != 0:
            pytest.fail(f"{CLUSTER_SH} up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    env = _cluster_env(state_dir)
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PATH")}
    os.environ.update({key: env[key] for key in saved})  # submitit and other code call sbatch/sacct themselves
    try:
        yield SlurmCluster(state_dir=state_dir, env=env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not was_up:
            down = _cluster_sh("down", state_dir, DOWN_TIMEOUT_S)
            if down.returncode != 0:
                pytest.fail(f"{CLUSTER_SH} down failed ({down.returncode}):\n{down.stderr}")


# ---- tiny LoDoPaB data and a repository-like submit folder for the sbatch/ stage scripts ----------------------
REPO_ROOT = CLUSTER_SH.parents[2]
TINY_LODOPAB_N = 40            # 32 train / 4 validation / 4 test slices
TINY_LODOPAB_GEOMETRY = (32, 24)  # lodopab().scaled(pixels, angles)
TINY_LODOPAB_PER_FILE = 16     # -> 4 raw file pairs -> 4 shards


@dataclasses.dataclass(frozen=True)
class TinyLodopab:
    raw: Path     # raw LoDoPaB layout (observation_*/ground_truth_* HDF5 files)
    shards: Path  # the same data prepped in-process by one task


@pytest.fixture(scope="session")
def slurm_tiny_lodopab(tmp_path_factory: pytest.TempPathFactory) -> TinyLodopab:
    """Synthetic LoDoPaB-format raw files (40 slices, 32^2 px, 24 angles, 4 file pairs) and their shard set."""
    from ctpipe.data.lodopab import prep_lodopab
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    root = tmp_path_factory.mktemp("slurm_lodopab")
    geometry = ParallelBeamGeometry.lodopab().scaled(*TINY_LODOPAB_GEOMETRY)
    write_synthetic_lodopab(root / "raw", n=TINY_LODOPAB_N, size="small", seed=11,
                            samples_per_file=TINY_LODOPAB_PER_FILE, geometry=geometry, progress=False)
    prep_lodopab(root / "raw", root / "shards", progress=False)
    return TinyLodopab(root / "raw", root / "shards")


def make_checkout(root: Path) -> Path:
    """``root`` laid out like the repository root for ``sbatch sbatch/<stage>.sh``: ``sbatch/`` and ``.venv``
    linked to this repository and this interpreter's environment, an empty ``logs/``. Returns ``root``."""
    import sys

    root.mkdir(parents=True, exist_ok=True)
    (root / "sbatch").symlink_to(REPO_ROOT / "sbatch", target_is_directory=True)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (root / "logs").mkdir()
    return root


def sacct_attempts(cluster: SlurmCluster, job_id: str) -> list[tuple[str, str, str, str]]:
    """Every attempt of ``job_id`` (requeues included, ``sacct -D``): (JobID, State, Start, End), oldest first."""
    out = cluster.run("sacct", "-D", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,Start,End")
    rows = [tuple(line.split("|")) for line in out.splitlines() if line.count("|") == 3]
    return [(jid, state.split()[0] if state else state, start, end) for jid, state, start, end in rows]


def read_events(run_dir: Path) -> list[dict]:
    """The run's events.jsonl as dicts ([] before the first event)."""
    import json

    path = run_dir / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


INTERRUPTIONS: dict[str, tuple[str, ...]] = {
    "usr2": ("scancel", "--signal=USR2"),  # what --signal=USR2@120 sends before the time limit
    "requeue": ("scontrol", "requeue"),  # SLURM ends every task with SIGTERM, then starts the job again
}


def run_concurrently(work: Mapping[str, Callable[[], object]], timeout: float,
                     meanwhile: Callable[[], None] = lambda: None) -> dict[str, object]:
    """Run each callable of ``work`` in its own thread while ``meanwhile`` runs in this one (it may install
    signal handlers: a training run); returns name -> what the callable returned, or the exception that ended
    it (:func:`outcome` re-raises it in the test that checks that name). ``timeout`` bounds each wait."""
    out: dict[str, object] = {}

    def guard(name: str, fn: Callable[[], object]) -> None:
        try:
            out[name] = fn()
        except BaseException as err:  # re-raised by the test that checks this name
            out[name] = err

    threads = [threading.Thread(target=guard, args=item, daemon=True) for item in work.items()]
    for thread in threads:
        thread.start()
    meanwhile()
    for thread in threads:
        thread.join(timeout)
    return out


def outcome(results: Mapping[str, object], name: str) -> Any:
    """What :func:`run_concurrently`'s callable ``name`` returned; re-raises what it raised."""
    if name not in results:
        raise AssertionError(f"{name} did not finish")
    got = results[name]
    if isinstance(got, BaseException):
        raise got
    return got


def wait_interrupted(cluster: SlurmCluster, jobs: Mapping[str, str], run_root: Path, start_timeout: float,
                     job_timeout: float) -> dict[str, object]:
    """Wait for every job of ``jobs`` (run name -> job id) at once; a job whose name is a key of INTERRUPTIONS is
    interrupted that way once ``run_root/<name>`` has logged its first epoch. Returns run name -> the job's
    final state, or the exception that ended the waiting for it."""

    def drive(name: str) -> str:
        if name in INTERRUPTIONS:
            wait_for(lambda: any(e["event"] == "epoch_end" for e in read_events(run_root / name)),
                     start_timeout, f"{name}: the first epoch")
            cluster.run(*INTERRUPTIONS[name], jobs[name])
        return cluster.wait(jobs[name], job_timeout)

    return run_concurrently({name: functools.partial(drive, name) for name in jobs}, start_timeout + job_timeout + 60)


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Two run folders hold the same training: history.csv byte for byte, every weight of latest.pt bit for bit."""
    import torch

    from ctpipe.checkpoint import LATEST, load_checkpoint

    assert (run_dir / "history.csv").read_bytes() == (reference / "history.csv").read_bytes()
    ours = load_checkpoint(run_dir / "checkpoints" / LATEST)["models"]
    theirs = load_checkpoint(reference / "checkpoints" / LATEST)["models"]
    for module, weights in theirs.items():
        for key, tensor in weights.items():
            assert torch.equal(ours[module][key], tensor), f"{module}.{key} differs from {reference}"
