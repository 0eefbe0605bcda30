"""Run one training stage in one process (of possibly many ranks): the function every launcher calls.

``ctpipe train``, the submitit job, ``srun`` inside an sbatch script and torchrun all end up here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ctpipe import distributed as dist_utils
from ctpipe.atomic import atomic_write_json
from ctpipe.config import ConfigError, build_config, load_json, to_dict
from ctpipe.paths import stage_configs_dir
from ctpipe.stages import get_stage
from ctpipe.checkpoint import archive_run
from ctpipe.train import FitResult, StopFlag, Trainer, configure_determinism, seed_everything

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


def resolve_config(stage: str, run_dir: Path, overrides: Sequence[str] = (), config_path: str | Path | None = None) -> Any:
    """Stage config = packaged JSON (or ``config_path``) + overrides; a resumed run reuses its saved config."""
    spec = get_stage(stage)
    saved = run_dir / "config.json"
    if saved.exists() and config_path is None:
        base = load_json(saved)
    else:
        base = load_json(config_path or stage_config_path(stage))
    cfg = build_config(spec.config_cls, base, overrides, where=f"{stage} config")
    if getattr(cfg, "stage", stage) != stage:
        raise ConfigError(f"config says stage={cfg.stage!r} but stage {stage!r} was asked for")
    return cfg


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
    if restart:  # a new start: the packaged (or given) config, not the archived run's
        config_path = config_path or stage_config_path(stage)
    cfg = resolve_config(stage, run_dir, overrides, config_path)
    env = dist_utils.detect_env()
    configure_determinism(cfg.train.deterministic)  # before the first CUDA call (cuBLAS workspace)
    device = dist_utils.pick_device(cfg.train.device, env)
    log.info(startup_line(stage, env, device, cfg.train.amp))
    dist_utils.init_distributed(env, device)
    try:
        if restart and env.is_main:
            archived = archive_run(run_dir)
            if archived is not None:
                log.warning("--restart: moved the old content of %s to %s", run_dir, archived)
        dist_utils.barrier()
        if env.is_main:
            atomic_write_json(run_dir / "config.json", to_dict(cfg))
        seed_everything(cfg.train.seed)
        task = spec.build_task(cfg, env, device)
        trainer = Trainer(task, cfg.train, cfg.scheduler, run_dir, device, env, stop_flag,
                          config_dict=to_dict(cfg), force_resume=force_resume,
                          batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
        flag = trainer.stop_flag
        with flag.installed():
            result: FitResult = trainer.fit()
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
    finally:
        dist_utils.shutdown()


def startup_line(stage: str, env: Any, device: torch.device, amp: str) -> str:
    """One line per rank before training: where it runs and on what (so a CPU fallback is visible in the log)."""
    import socket

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"start {stage}: host={socket.gethostname()} rank={env.rank}/{env.world_size} "
            f"local_rank={env.local_rank} device={device} ({name}) amp={amp}")


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


def summarize(result: RunResult) -> str:
    return json.dumps(result.__dict__)
