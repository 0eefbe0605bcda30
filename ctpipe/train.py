"""The Trainer shared by every stage: epochs, exact resume, checkpoints, preemption, early stopping.

A stage hands the trainer a :class:`~ctpipe.task.Task` (its modules, optimizers, datasets and two step
functions) and one :class:`RunSettings`. The trainer knows no scheduler system: a preemption reaches it as a
flag (:class:`~ctpipe.stop_flag.StopFlag`), it finishes the current step, writes ``latest.pt`` and returns
``"preempted"``; the launcher decides about requeueing.

Exact resume: the data order is a pure function of (seed, epoch); everything else that changes during
training (weights, optimizer/scheduler/scaler state, RNG states, running sums of the epoch, history,
early-stopping state: :mod:`ctpipe.train_state`) is in the checkpoint, which is taken between steps. An
interrupted and resumed CPU run therefore ends with bit-identical weights and ``history.csv``. Wall-clock
figures go to ``timing.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ctpipe import checkpoint as ckpt
from ctpipe import distributed as dist_utils
from ctpipe.atomic import atomic_write_text
from ctpipe.config import SchedulerConfig, TrainConfig, to_dict
from ctpipe.determinism import NondeterministicOpError, configure_determinism, named_nondeterminism, seed_everything
from ctpipe.errors import RunFolderError
from ctpipe.progress import RateLog
from ctpipe.sampler import ResumableSampler, collate
from ctpipe.schedules import EpochScheduler
from ctpipe.stepper import NonFiniteLossError, TrainStepper
from ctpipe.stop_flag import StopFlag
from ctpipe.task import INDEX_KEY, Task, check_batch, check_task, example_images_of, finds_unused_parameters
from ctpipe.tensorboard_log import open_tensorboard
from ctpipe.train_state import RankState, TrainState

# the trainer's public names, some defined in the modules it is built from (callers import them from here)
__all__ = ["ConfigMismatchError", "FitResult", "NonFiniteLossError", "NondeterministicOpError", "ResumableSampler",
           "RunSettings", "StopFlag", "Task", "Trainer", "TrainStepper", "collate", "configure_determinism",
           "seed_everything"]

log = logging.getLogger(__name__)


class ConfigMismatchError(RunFolderError, RuntimeError):
    """A run folder's checkpoint was made with a different model/optimizer configuration."""


# ---- the trainer ---------------------------------------------------------------------------------------
@dataclass
class FitResult:
    status: str  # "completed" | "early_stopped" | "segment_done" | "preempted"
    epoch: int
    best_metric: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on ``device`` (other entries, such as sample ids, as they are)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


@dataclass(frozen=True)
class RunSettings:
    """Everything the trainer is configured with, in one object: a stage config's ``train`` and ``scheduler``
    sections, its loader sizes, and the whole stage config as recorded in every checkpoint."""

    train: TrainConfig
    scheduler: SchedulerConfig
    batch_size: int
    num_workers: int = 0
    record: Mapping[str, Any] = field(default_factory=dict)  # the stage config, saved as the checkpoint's "config"

    @classmethod
    def of(cls, cfg: Any) -> "RunSettings":
        """The settings of a stage config (any config with ``train``, ``scheduler`` and ``data`` sections)."""
        return cls(cfg.train, cfg.scheduler, cfg.data.batch_size, cfg.data.num_workers, to_dict(cfg))


class Trainer:
    """Runs a :class:`~ctpipe.task.Task` for ``settings.train.epochs`` epochs in ``run_dir`` with exact,
    checkpointed resume."""

    def __init__(self, task: Task, settings: RunSettings, run_dir: str | Path, device: torch.device,
                 env: dist_utils.DistEnv | None = None, stop_flag: StopFlag | None = None,
                 force_resume: bool = False, progress: bool | None = None) -> None:
        check_task(task)
        cfg = settings.train
        self.task, self.settings, self.cfg, self.device = task, settings, cfg, device
        self.env = env or dist_utils.DistEnv()
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop_flag = stop_flag or StopFlag()
        self.force_resume = force_resume
        self.batch_size, self.num_workers = settings.batch_size, settings.num_workers
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.sampler = ResumableSampler(len(task.train_set), shuffle=True, seed=cfg.seed,
                                        rank=self.env.rank, world_size=self.env.world_size)
        steps = math.ceil(len(self.sampler.rank_indices()) / self.batch_size)
        self.steps_per_epoch = min(steps, cfg.max_steps_per_epoch or steps)
        optimizer_steps = math.ceil(self.steps_per_epoch / cfg.grad_accum)
        # The configured learning rates, read before the schedulers touch the param groups: a resume with
        # --force-resume and another optim.lr compares them with the checkpoint's and applies the change.
        self.base_lrs = {name: [float(g["lr"]) for g in opt.param_groups] for name, opt in task.optimizers.items()}
        self.schedulers = {name: EpochScheduler(opt, settings.scheduler, cfg.epochs, optimizer_steps)
                           for name, opt in task.optimizers.items()}
        self.train_modules = self._wrap_modules()
        self.stepper = TrainStepper(cfg, device, task.optimizers, self.schedulers, self.train_modules)
        self.state = TrainState()
        self.rank_state = RankState()
        self._last_save = time.monotonic()
        self.tb = open_tensorboard(cfg.tensorboard, self.run_dir, self.env.is_main)  # None unless enabled

    # -- set-up -------------------------------------------------------------------------------------
    def _wrap_modules(self) -> dict[str, nn.Module]:
        wrapped = {}
        for name, module in self.task.modules.items():
            module.to(self.device)
            trainable = any(p.requires_grad for p in module.parameters())
            if dist_utils.group_active() and trainable:  # several ranks, or one forced through DDP
                ids = [self.device.index] if self.device.type == "cuda" else None
                # a task whose loss leaves an output head without gradient says so (else DDP raises at step 2)
                module = nn.parallel.DistributedDataParallel(
                    module, device_ids=ids, find_unused_parameters=finds_unused_parameters(self.task))
            if self.cfg.compile and trainable:
                module = torch.compile(module)  # type: ignore[assignment]
            wrapped[name] = module
        return wrapped

    # -- checkpoint ---------------------------------------------------------------------------------
    def _checkpoint_dict(self) -> dict[str, Any]:
        """The full state; per-rank parts (RNG, running sums of the epoch) are gathered from every rank."""
        return {
            **self.state.to_dict(),
            "rank_states": dist_utils.all_gather_objects(self.rank_state.to_dict(self.device)),
            "models": {n: m.state_dict() for n, m in self.task.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.task.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.stepper.scaler.state_dict(),
            "base_lrs": self.base_lrs,
            "micro_step": self.stepper.micro_step,
            "fingerprint": json.dumps(self.task.fingerprint, sort_keys=True),
            "runtime": self._runtime(),
            "config": json.dumps(dict(self.settings.record), sort_keys=True),
        }

    def _runtime(self) -> str:
        """What a checkpoint's optimizer/scaler state depends on besides the model: AMP mode and device type."""
        return json.dumps({"amp": self.cfg.amp, "device": self.device.type}, sort_keys=True)

    def save(self, kind: str = "latest") -> None:
        """Write a checkpoint: every rank must call this (it gathers), rank 0 writes.

        ``kind`` is latest, best or periodic."""
        state = self._checkpoint_dict()
        if self.env.is_main:
            if kind == "latest":
                ckpt.save_latest(state, self.ckpt_dir)
            elif kind == "best":
                ckpt.save_checkpoint(state, self.ckpt_dir / ckpt.BEST)
            else:
                ckpt.save_checkpoint(state, self.ckpt_dir / f"epoch_{self.state.epoch:03d}.pt")
        self._last_save = time.monotonic()

    def resume(self) -> Path | None:
        """Load the newest readable checkpoint of the run folder, if any."""
        unreadable: list[str] = []
        found = ckpt.load_newest(self.ckpt_dir, self.device, unreadable)
        paths = dist_utils.all_gather_objects(None if found is None else str(found[0]))
        if len(set(paths)) > 1:
            raise RuntimeError(f"ranks chose different checkpoints to resume from ({paths}); is {self.ckpt_dir} on "
                               "a file system every node sees the same way?")
        if found is None:
            self._refuse_lost_history(unreadable)
            return None
        path, saved = found
        self._check_compatible(saved, path)
        state = TrainState.from_dict(saved, path)  # both parsed first: a checkpoint without them changes nothing
        rank_state = self._rank_state(saved.get("rank_states") or [], state, path)  # restores this rank's RNG
        self._load_objects(saved)
        self._apply_changed_lrs(saved.get("base_lrs"), path)
        self.state, self.rank_state = state, rank_state
        log.info("resumed from %s at epoch %d step %d", path, state.epoch, state.step_in_epoch)
        self.event("resumed", path=str(path), epoch=state.epoch, step=state.step_in_epoch)
        return path

    def _check_compatible(self, saved: Mapping[str, Any], path: Path) -> None:
        """Refuse a checkpoint of other model/optimizer settings (unless --force-resume) or AMP mode/device."""
        fingerprint = json.dumps(self.task.fingerprint, sort_keys=True)
        if saved["fingerprint"] != fingerprint and not self.force_resume:
            raise ConfigMismatchError(
                f"{path} was written with model/optimizer settings {saved['fingerprint']}, but this run asks for "
                f"{fingerprint}; use a new --run-dir, or pass --force-resume to continue anyway")
        runtime = saved.get("runtime")
        if runtime is not None and runtime != self._runtime():
            raise ConfigMismatchError(
                f"{path} was written with {runtime} but this run uses {self._runtime()}; the optimizer and "
                "gradient-scaler state of one AMP mode/device does not carry over to another. Resume with the "
                "saved train.amp and train.device, or start anew with --restart or a new --run-dir")

    def _load_objects(self, saved: Mapping[str, Any]) -> None:
        """Weights, optimizer, scheduler and gradient-scaler states of a checkpoint."""
        for name, module in self.task.modules.items():
            module.load_state_dict(saved["models"][name])
        for name, opt in self.task.optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(saved["schedulers"][name])
        self.stepper.scaler.load_state_dict(saved["scaler"])
        self.stepper.micro_step = saved["micro_step"]

    def _apply_changed_lrs(self, saved_lrs: dict[str, list[float]] | None, path: Path) -> None:
        """A resume whose configured learning rates differ from the checkpoint's (only possible with
        --force-resume, the fingerprint holds them) continues with the new ones, recorded in events.jsonl.

        Without this the restored optimizer/scheduler state would silently keep the old rates while
        config.json said otherwise. Checkpoints written before base rates were saved keep their rates."""
        if saved_lrs is None:
            return
        for name, new in self.base_lrs.items():
            old = saved_lrs.get(name, new)
            if list(old) == new:
                continue
            self.schedulers[name].rescale_base_lrs(self.task.optimizers[name], [n / o for n, o in zip(new, old)])
            now = [g["lr"] for g in self.task.optimizers[name].param_groups]
            log.warning("%s: optimizer %r continues with base lr %s instead of the checkpoint's %s (lr now %s)",
                        path, name, new, old, now)
            self.event("lr_changed", optimizer=name, old_base_lr=list(old), new_base_lr=new, lr_now=now)

    def _refuse_lost_history(self, unreadable: list[str]) -> None:
        """No readable checkpoint: fine for a new run folder, an error when the folder shows earlier training
        (starting over would overwrite its history.csv and, with a worse model, its best.pt)."""
        history = ckpt.run_history(self.run_dir)
        if not unreadable and not history:
            return
        lines = "\n  ".join(unreadable or ["(no checkpoint files)"])
        raise RunFolderError(
            f"{self.run_dir} holds earlier training ({', '.join(str(p) for p in history) or 'checkpoints'}) but no "
            f"readable checkpoint to resume from:\n  {lines}\nPass --restart to move the old content to "
            f"{self.run_dir}/archive-<time>/ and start anew, or use a new --run-dir")

    def _rank_state(self, rank_states: list[dict[str, Any]], state: TrainState, path: Path) -> RankState:
        """This rank's RNG (restored) and running sums; a different world size can only resume at an epoch
        boundary."""
        if not rank_states:
            raise RunFolderError(f"{path} has no 'rank_states' (RNG and running sums), so it cannot resume exactly; "
                                 "start anew with --restart or use a new --run-dir")
        if len(rank_states) == self.env.world_size:
            mine = rank_states[self.env.rank]
        elif state.step_in_epoch == 0:
            log.warning("%s was written by %d rank(s), resuming on %d at an epoch boundary", path,
                        len(rank_states), self.env.world_size)
            mine = {**rank_states[0], "epoch_sums": {}, "epoch_count": 0}
        else:
            raise RuntimeError(f"{path} stopped mid-epoch with {len(rank_states)} rank(s); resume it with the same "
                               f"number of ranks (now {self.env.world_size}) to keep the run exact")
        return RankState.restore(mine, self.device, path)

    # -- logging ------------------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        if not self.env.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "events.jsonl", "a") as handle:
            handle.write(json.dumps({"time": time.time(), "event": kind, **fields}) + "\n")

    def _write_tables(self) -> None:
        if self.env.is_main:
            _write_csv(self.run_dir / "history.csv", self.state.history)
            _write_csv(self.run_dir / "timing.csv", self.state.timing)

    # -- loops --------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler: Sampler[int], batch_size: int, seed: int = 0) -> DataLoader:
        # A private generator: creating an iterator must not draw from the global RNG (it would shift dropout
        # masks after a mid-epoch resume), and worker seeds become a function of (seed, epoch).
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, generator=generator)

    def _train_epoch_means(self) -> dict[str, float]:
        sums = self.rank_state
        keys = sorted(sums.epoch_sums)
        local = torch.tensor([sums.epoch_sums[k] for k in keys] + [sums.epoch_count], dtype=torch.float64)
        total = dist_utils.all_reduce_sum(local)
        count = max(total[-1].item(), 1.0)
        return {f"train_{k}": total[i].item() / count for i, k in enumerate(keys)}

    def _set_train_mode(self, training: bool) -> None:
        for module in self.task.modules.values():
            module.train(training)

    def _run_train_steps(self) -> bool:
        """Train the rest of the current epoch; returns False when stopped by the flag."""
        state = self.state
        epoch = state.epoch
        self.sampler.set_epoch(epoch, state.step_in_epoch * self.batch_size)
        loader = self._loader(self.task.train_set, self.sampler, self.batch_size,
                              seed=self.cfg.seed * 1_000_003 + epoch)
        self._set_train_mode(True)
        start = time.monotonic()
        seen = 0
        bar = _progress(self.progress and self.env.is_main, total=self.steps_per_epoch,
                        initial=state.step_in_epoch, desc=f"epoch {epoch}")
        rate = RateLog(self.steps_per_epoch, state.step_in_epoch, self.cfg.log_every, self.cfg.log_interval_s)
        for batch in loader:
            if state.step_in_epoch >= self.steps_per_epoch:
                break
            check_batch(batch, self.task.train_set)
            batch = to_device(batch, self.device)
            with named_nondeterminism():
                terms = self.task.train_step(batch, self.stepper)
            self.stepper.end_micro_step()
            self.rank_state.add(terms)
            state.advance_step()
            seen += len(batch[INDEX_KEY])
            bar.update(1)
            if rate.step():
                self._log_step(terms, seen, time.monotonic() - start, rate)
            stop, save_due = self._agree_on_stop_and_save()
            if stop:
                bar.close()
                return False
            if save_due:
                self.save("latest")
        bar.close()
        return True

    def _agree_on_stop_and_save(self) -> tuple[bool, bool]:
        """Stop if any rank got the signal; save when rank 0's timer is due -- one all_reduce for both,
        so every rank takes the same decision at the same step."""
        due = self.env.is_main and time.monotonic() - self._last_save > self.cfg.checkpoint_interval_s
        votes = torch.tensor([float(self.stop_flag.is_set()), float(due)], dtype=torch.float64)
        stop, save = dist_utils.all_reduce_sum(votes).tolist()
        return stop > 0, save > 0

    def _log_step(self, terms: Mapping[str, torch.Tensor], seen: int, elapsed: float, rate: RateLog) -> None:
        lr = next(iter(self.task.optimizers.values())).param_groups[0]["lr"]
        text = " ".join(f"{k}={float(v):.5g}" for k, v in terms.items())
        log.info("epoch %d step %d/%d %s lr=%.3g samples/s=%.1f %s", self.state.epoch,
                 self.state.step_in_epoch, self.steps_per_epoch, text, lr,
                 seen * self.env.world_size / max(elapsed, 1e-9), rate.rate_eta())
        if self.tb is not None:
            self.tb.step(self.state.global_step, {**terms, "lr": lr})

    @torch.no_grad()
    def evaluate(self, dataset: Dataset, batch_size: int | None = None) -> dict[str, float]:
        """Mean of the task's per-sample values over ``dataset`` (all ranks; each sample counted once)."""
        sampler = ResumableSampler(len(dataset), shuffle=False, seed=0, rank=self.env.rank,
                                   world_size=self.env.world_size, pad=False)
        self._set_train_mode(False)
        rows: list[tuple[int, dict[str, float]]] = []
        loader = self._loader(dataset, sampler, batch_size or self.batch_size)
        rate = RateLog(len(loader), 0, self.cfg.log_every, self.cfg.log_interval_s)
        for batch in loader:
            check_batch(batch, dataset)
            batch = to_device(batch, self.device)
            with self.stepper.autocast(), named_nondeterminism():
                values = self.task.eval_step(batch)
            if rate.step() and self.env.is_main:
                log.info("evaluating batch %d/%d %s", rate.done, rate.total, rate.rate_eta())
            for i, index in enumerate(batch[INDEX_KEY]):
                rows.append((int(index), {k: float(v[i]) for k, v in values.items()}))
        gathered = sorted((r for part in dist_utils.all_gather_objects(rows) for r in part), key=lambda r: r[0])
        keys = gathered[0][1].keys() if gathered else []
        return {k: math.fsum(r[1][k] for r in gathered) / len(gathered) for k in keys}

    def _end_epoch(self, elapsed: float) -> bool:
        """Validation, schedulers, history, checkpoints; returns True when early stopping triggers."""
        epoch = self.state.epoch
        row: dict[str, Any] = {"epoch": epoch + 1, **self._train_epoch_means()}
        monitor_value = None
        if self.task.val_set is not None and (epoch + 1) % self.cfg.val_every == 0:
            val = {f"val_{k}": v for k, v in self.evaluate(self.task.val_set).items()}
            row.update(val)
            monitor_value = val.get(self.cfg.monitor, row.get(self.cfg.monitor))
            if monitor_value is None:
                raise KeyError(f"train.monitor={self.cfg.monitor!r} is not among {sorted(row)}")
        for name, opt in self.task.optimizers.items():
            row[f"lr_{name}" if len(self.task.optimizers) > 1 else "lr"] = opt.param_groups[0]["lr"]
        for sched in self.schedulers.values():
            sched.after_epoch(monitor_value)
        improved = self._update_best(monitor_value)
        if self.tb is not None:
            self._log_examples(row["epoch"])
            self.tb.epoch(row["epoch"], row)
        n_samples = self.steps_per_epoch * self.batch_size * self.env.world_size
        self.state.finish_epoch(row, {"epoch": epoch + 1, "wall_s": round(elapsed, 3),
                                      "samples_per_s": round(n_samples / max(elapsed, 1e-9), 3)})
        self.rank_state = RankState()
        stop = (self.cfg.early_stopping_patience is not None and monitor_value is not None
                and self.state.bad_epochs > self.cfg.early_stopping_patience - 1)
        self.state.stopped_early = stop
        if improved:
            self.save("best")
        if self.cfg.checkpoint_every and self.state.epoch % self.cfg.checkpoint_every == 0:
            self.save("periodic")
        self.save("latest")
        self._write_tables()
        log.info("epoch %d done: %s", epoch + 1, {k: (round(v, 6) if isinstance(v, float) else v)
                                                  for k, v in row.items()})
        self.event("epoch_end", **{k: v for k, v in row.items()})
        return stop

    @torch.no_grad()
    def _log_examples(self, epoch: int) -> None:
        """TensorBoard images of the first validation sample, for a task with ``example_images(batch)``
        (rank 0 only; eval mode and no randomness, so the training stays exactly as without it)."""
        shows = example_images_of(self.task)
        if self.tb is None or shows is None or not self.task.val_set:
            return
        self._set_train_mode(False)
        with self.stepper.autocast():
            images = shows.example_images(to_device(collate([self.task.val_set[0]]), self.device))
        self.tb.images(epoch, {k: v.detach().float().cpu().numpy() for k, v in images.items()})

    def _update_best(self, value: float | None) -> bool:
        """True when this epoch's monitored value is the best so far (None: no validation this epoch)."""
        return value is not None and self.state.record_monitor(value, self.cfg.monitor_mode)

    def fit(self) -> FitResult:
        """Resume if possible, then train until done, early-stopped, a segment ends, or preempted."""
        self.resume()
        state = self.state  # resume() replaced it when it found a checkpoint
        if state.is_fresh:
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.env.rank)  # e.g. distinct dropout masks per rank
        epochs_this_call = 0
        status = "completed"
        while not state.stopped_early and state.epoch < self.cfg.epochs:
            if self.cfg.segment_epochs and epochs_this_call >= self.cfg.segment_epochs:
                status = "segment_done"
                break
            started = time.monotonic() - state.epoch_elapsed
            if not self._run_train_steps():
                state.epoch_elapsed = time.monotonic() - started
                self.save("latest")
                self.event("preempted", reason=self.stop_flag.reason, epoch=state.epoch, step=state.step_in_epoch)
                return FitResult("preempted", state.epoch, state.best_metric, state.history)
            if self._end_epoch(time.monotonic() - started):
                status = "early_stopped"
            epochs_this_call += 1
        if status == "segment_done" and state.epoch >= self.cfg.epochs:
            status = "completed"
        if state.stopped_early:
            status = "early_stopped"
        self._write_tables()
        self.event("fit_end", status=status, epoch=state.epoch)
        return FitResult(status, state.epoch, state.best_metric, state.history)


def _progress(enabled: bool, **kwargs: Any) -> Any:
    return tqdm(disable=not enabled, leave=False, **kwargs)
