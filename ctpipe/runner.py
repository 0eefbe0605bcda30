"""Run one training stage in one process (of possibly many ranks): the function every launcher calls.

``ctpipe train``, the submitit job, ``srun`` inside an sbatch script and torchrun all end up here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ctpipe import distributed as dist_utils
from ctpipe.atomic import atomic_write_json
from ctpipe.config import ConfigError, build_config, load_json, to_dict
from ctpipe.errors import RunFolderError, UserError
from ctpipe.paths import stage_configs_dir
from ctpipe.runlock import RunLock, RunLockedError
from ctpipe.stages import get_stage
from ctpipe.checkpoint import archive_run
from ctpipe.data import shards as sh
from ctpipe.data.datasets import check_split_names
from ctpipe.data.shards import read_manifest, shard_set_identity
from ctpipe.train import (ConfigMismatchError, FitResult, NonFiniteLossError, RunSettings, StopFlag, Trainer,
                          configure_determinism, seed_everything)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    stage: str
    run_dir: str
    status: str
    epoch: int
    best_metric: float | None


def stage_config_path(stage: str) -> Path:
    return stage_configs_dir() / f"{stage}.json"


class TrainingDivergedError(UserError):
    """The loss became NaN/Inf; the message names the run, epoch and step."""


class ResumeRefusedError(RunFolderError):
    """A run folder holds training state made with other settings (or data) than those asked for."""


def resolve_config(stage: str, run_dir: Path, overrides: Sequence[str] = (), config_path: str | Path | None = None) -> Any:
    """Stage config = packaged JSON (or ``config_path``) + overrides; a resumed run reuses its saved config."""
    spec = get_stage(stage)
    saved = run_dir / "config.json"
    if saved.is_file() and config_path is None:
        base = load_json(saved)
    else:
        base = load_json(config_path or stage_config_path(stage))
    cfg = build_config(spec.config_cls, base, overrides, where=f"{stage} config")
    if getattr(cfg, "stage", stage) != stage:
        raise ConfigError(f"config says stage={cfg.stage!r} but stage {stage!r} was asked for")
    return cfg


# settings that may change when a run resumes: how long it runs and how it logs, not what it trains
RESUMABLE_CHANGES = frozenset({"train.epochs", "train.early_stopping_patience", "train.segment_epochs",
                               "train.log_every", "train.checkpoint_interval_s", "train.checkpoint_every",
                               "train.device", "data.num_workers", "data.eval_batch_size"})


def check_run_dir(run_dir: Path) -> None:
    """``--run-dir`` must be a folder (or not exist yet)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--run-dir {run_dir} is a file, not a folder; give a folder (it is created when "
                             "missing), e.g. runs/<stage>/<name>")


def has_training_state(run_dir: Path) -> bool:
    """True when the folder holds a checkpoint or a history, i.e. a start there is a resume."""
    ckpt_dir = run_dir / "checkpoints"
    return (run_dir / "history.csv").is_file() or (ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(run_dir: Path, cfg: Any) -> dict[str, list[Any]]:
    """``{key: [saved, asked]}`` for every setting that differs from the run folder's ``config.json``."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return {}
    saved = _flatten(load_json(saved_path))
    asked = _flatten(json.loads(json.dumps(to_dict(cfg))))
    return {k: [saved.get(k), asked.get(k)] for k in sorted(set(saved) | set(asked)) if saved.get(k) != asked.get(k)}


def check_resume(run_dir: Path, changes: Mapping[str, list[Any]], force_resume: bool) -> None:
    """Refuse to resume a run with changed settings that alter what it trains, unless ``force_resume``."""
    if not has_training_state(run_dir) or force_resume:
        return
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
    if refused:
        described = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ResumeRefusedError(
            f"{run_dir} holds a run trained with other settings ({described}); nothing was changed there. "
            f"Use a new --run-dir for the new settings, repeat the original command to resume, or pass "
            f"--force-resume to continue this run with the new settings (recorded in {run_dir / 'events.jsonl'})")


# the kind of shard set each stage trains on (manifest attrs "kind", or "dataset" for LoDoPaB) and its prep
STAGE_DATA_KIND: dict[str, str] = {"fbp_window": "lodopab", "fbp_unet": "lodopab", "pix2pix_phase": "nifti_pairs",
                                   "stage1_64": "xray2ct", "refine_256": "xray2ct", "direct_256": "xray2ct"}
PREP_COMMAND: dict[str, str] = {"lodopab": "ctpipe prep lodopab", "nifti_pairs": "ctpipe prep nifti-pairs",
                                "xray2ct": "ctpipe prep drr"}


def check_data_kind(stage: str, root: str | Path) -> None:
    """Refuse a shard set of another family (e.g. a pix2pix set given to fbp_window), naming its path."""
    attrs = read_manifest(root).attrs
    have, want = attrs.get("kind") or attrs.get("dataset"), STAGE_DATA_KIND.get(stage)
    if have is None or want is None or have == want:
        return
    raise ConfigError(f"data.root={root} is a {have!r} shard set (from `{PREP_COMMAND.get(have, have)}`), but stage "
                      f"{stage} trains on a {want!r} set; set data.root to the output of `{PREP_COMMAND[want]}`")


def check_data(cfg: Any) -> None:
    """The shard set is of the stage's kind and has the configured split names (before any work starts)."""
    data = getattr(cfg, "data", None)
    root = getattr(data, "root", None)
    if root is None:
        return
    check_data_kind(getattr(cfg, "stage", ""), root)

    names = {f"data.{option}": getattr(data, option) for option in ("train_split", "val_split", "test_split")
             if isinstance(getattr(data, option, None), str)}
    if names.get("data.test_split") == "test":  # the default: a set without held-out test patients is fine
        del names["data.test_split"]
    check_split_names(root, names)


def _event(run_dir: Path, kind: str, **fields: Any) -> None:
    with open(run_dir / "events.jsonl", "a") as handle:
        handle.write(json.dumps({"time": time.time(), "event": kind, **fields}) + "\n")


@contextlib.contextmanager
def _run_folder_lock(run_dir: Path, env: Any) -> Iterator[None]:
    """Rank 0 holds ``RUN/run.lock`` for the whole stage; every rank learns whether it got it."""
    lock: RunLock | None = None
    refusal = None
    if env.is_main:
        try:
            lock = RunLock(run_dir)
            lock.acquire()
            if lock.took_over:
                log.warning("took over the lock of %s: %s", run_dir, lock.took_over)
        except UserError as err:  # held by another process, or no space left for the lock file
            if not env.distributed:
                raise
            lock, refusal = None, str(err)
    refusal = dist_utils.broadcast_object(refusal) if env.distributed else refusal
    if refusal is not None:  # every rank stops with rank 0's reason
        raise RunLockedError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def verify_data(cfg: Any, run_dir: Path, env: Any, write_stamp: bool = True) -> list[Any]:
    """Every shard of the configured set matches the manifest's SHA-256 (ranks share the hashing).

    A stamp in ``RUN/shards_verified.json`` records the shards that matched (size, mtime, checksum), so a
    requeued job re-hashes only shards that changed. ``CTPIPE_VERIFY_SHARDS=0`` skips the check.
    ``write_stamp=False`` leaves the stamp to :func:`stamp_verified` (once the run folder may change).
    """
    root = getattr(getattr(cfg, "data", None), "root", None)
    if root is None or os.environ.get("CTPIPE_VERIFY_SHARDS", "1") == "0":
        return []
    manifest = sh.read_manifest(root)
    stamp_path = run_dir / "shards_verified.json"
    stamp = sh.read_verify_stamp(stamp_path, manifest)
    started = time.monotonic()
    mine = [sh.check_shard(manifest, info, stamp) for info in manifest.shards[env.rank::env.world_size]]
    checks = [c for part in dist_utils.all_gather_objects(mine) for c in part] if env.distributed else mine
    hashed = [c for c in checks if c.hashed]
    if hashed:
        gigabytes = sum(c.size_bytes for c in hashed) / 1e9
        log.info("verified %d shard(s) of %s (%.3f GB) in %.1f s", len(hashed), root, gigabytes,
                 time.monotonic() - started)
    error = sh.damaged_shards_error(manifest, checks)
    if error is not None:
        raise error
    if write_stamp:
        stamp_verified(cfg, run_dir, env, checks)
    return checks


def stamp_verified(cfg: Any, run_dir: Path, env: Any, checks: Sequence[Any]) -> None:
    """Rank 0 records freshly hashed shards that matched in ``RUN/shards_verified.json``."""
    if env.is_main and any(c.hashed for c in checks):
        sh.write_verify_stamp(run_dir / "shards_verified.json", sh.read_manifest(cfg.data.root), checks)


def add_data_identity(task: Any, cfg: Any) -> None:
    """The shard set's identity joins the task's fingerprint, so resuming on other data is refused."""
    root = getattr(getattr(cfg, "data", None), "root", None)
    if root is None:
        return
    task.fingerprint = {**task.fingerprint, "data": shard_set_identity(root)}


class _RunTrainer(Trainer):
    """The trainer, plus the run folder's ``config.json``: written once the resume check has passed."""

    on_resume_checked: Any = None

    def resume(self) -> Path | None:
        try:
            found = super().resume()
        except ConfigMismatchError as err:
            raise ResumeRefusedError(f"{err}; nothing in {self.run_dir} was changed") from None
        if self.on_resume_checked is not None:
            self.on_resume_checked()
        return found


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("CTPIPE_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s [%(name)s] %(message)s")


def run_stage(stage: str, run_dir: str | Path, overrides: Sequence[str] = (), config_path: str | Path | None = None,
              force_resume: bool = False, stop_flag: StopFlag | None = None, evaluate: bool = True,
              restart: bool = False) -> RunResult:
    """Train ``stage`` in ``run_dir`` (resuming when it holds a checkpoint), then run its final evaluation.

    ``restart`` first moves the folder's old content to ``run_dir/archive-<time>/`` and starts anew."""
    configure_logging()
    run_dir = Path(run_dir)
    spec = get_stage(stage)
    check_run_dir(run_dir)
    if restart:  # a new start: the packaged (or given) config, not the archived run's
        config_path = config_path or stage_config_path(stage)
    cfg = resolve_config(stage, run_dir, overrides, config_path)
    changes = {} if restart else config_changes(run_dir, cfg)
    if not restart:
        check_resume(run_dir, changes, force_resume)
    env = dist_utils.detect_env()
    configure_determinism(cfg.train.deterministic)  # before the first CUDA call (cuBLAS workspace)
    device = dist_utils.pick_device(cfg.train.device, env)  # train.device=cuda on a node without one: stop here
    check_data(cfg)
    log.info(startup_line(stage, env, device, cfg.train.amp))
    dist_utils.init_distributed(env, device)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with _run_folder_lock(run_dir, env):
            if restart:
                _archive_for_restart(run_dir, env)
            return _run_locked(spec, cfg, run_dir, device, env, changes, force_resume, stop_flag, evaluate)
    finally:
        dist_utils.shutdown()


def _archive_for_restart(run_dir: Path, env: Any) -> None:
    """``--restart``: rank 0 moves the old content aside (under the run lock); every rank waits for it."""
    if env.is_main:
        archived = archive_run(run_dir)
        if archived is not None:
            log.warning("--restart: moved the old content of %s to %s", run_dir, archived)
    dist_utils.barrier()


def startup_line(stage: str, env: Any, device: torch.device, amp: str) -> str:
    """One line per rank before training: where it runs and on what (so a CPU fallback is visible in the log)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"start {stage}: host={socket.gethostname()} rank={env.rank}/{env.world_size} "
            f"local_rank={env.local_rank} device={device} ({name}) amp={amp}")


def _run_locked(spec: Any, cfg: Any, run_dir: Path, device: torch.device, env: Any, changes: Mapping[str, Any],
                force_resume: bool, stop_flag: StopFlag | None, evaluate: bool) -> RunResult:
    stage = spec.name
    checks = verify_data(cfg, run_dir, env, write_stamp=False)
    seed_everything(cfg.train.seed)
    task = spec.build_task(cfg, env, device)
    add_data_identity(task, cfg)
    trainer = _RunTrainer(task, RunSettings.of(cfg), run_dir, device, env, stop_flag, force_resume=force_resume)

    written: list[bool] = []

    def write_config() -> None:
        if written:
            return
        written.append(True)
        if not env.is_main:
            return
        if changes:
            _event(run_dir, "config_changed", changes=changes, forced=force_resume)
        if changes or not (run_dir / "config.json").is_file():
            atomic_write_json(run_dir / "config.json", to_dict(cfg))
        stamp_verified(cfg, run_dir, env, checks)

    trainer.on_resume_checked = write_config
    flag = trainer.stop_flag
    with flag.installed():
        try:
            result: FitResult = trainer.fit()
        except NonFiniteLossError as err:
            state = trainer.state
            raise TrainingDivergedError(
                f"{run_dir}: {err} at epoch {state.epoch + 1}, step {state.step_in_epoch + 1} (global step "
                f"{state.global_step + 1}); earlier checkpoints are kept. Lower optim.lr, set train.grad_clip or "
                "check the data, then resume with those settings and --force-resume, or use a new --run-dir") from None
    write_config()  # no-op when the resume check already wrote it (the trainer always checks first)
    status = result.status
    if evaluate and status in ("completed", "early_stopped"):
        if _evaluate_then_wait(spec, cfg, task, run_dir, device, env, flag):
            trainer.event("evaluated")
        else:
            status = "preempted"
    else:
        _evaluate_then_wait(None, cfg, task, run_dir, device, env, flag)
    log.info("stage %s in %s: %s at epoch %d", stage, run_dir, status, result.epoch)
    return RunResult(stage, str(run_dir), status, result.epoch, result.best_metric)


class EvaluationInterrupted(Exception):
    """SIGUSR2/SIGTERM arrived during the final evaluation."""


def _final_evaluation(spec: Any, cfg: Any, task: Any, run_dir: Path, device: torch.device, env: Any,
                      flag: StopFlag) -> bool:
    """The stage's final evaluation; False when a stop signal interrupted it.

    Training is finished and checkpointed before this starts, so an interruption loses only the evaluation
    (its files are written atomically): the run reports ``preempted`` (the CLI exits with the preemption
    code, so sbatch/submitit requeue it) and the restarted job finds the finished run and evaluates again.
    Without this, SIGUSR2's default action would kill the process and the job would not be requeued.
    """
    try:
        with flag.installed(interrupt=EvaluationInterrupted):
            spec.final_evaluation(cfg, task, run_dir, device, env)
    except EvaluationInterrupted as stop:
        log.warning("final evaluation in %s %s; training is complete, a restart evaluates again", run_dir, stop)
        return False
    return True


def _evaluate_then_wait(spec: Any, cfg: Any, task: Any, run_dir: Path, device: torch.device, env: Any,
                        flag: StopFlag) -> bool:
    """The final evaluation (``spec`` None: none), then every rank waits for the others.

    Stages evaluate on rank 0 only, which may take longer than the process-group timeout (a 256^3 test set):
    the other ranks wait in :func:`distributed.wait_for_all`, which has no such timeout; a late signal must
    not kill a finished rank while it waits. False when a stop signal interrupted the evaluation."""
    done = True if spec is None else _final_evaluation(spec, cfg, task, run_dir, device, env, flag)
    with flag.installed():
        dist_utils.wait_for_all()
    return done
