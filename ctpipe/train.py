"""The Trainer shared by every stage: epochs, exact resume, checkpoints, preemption, early stopping.

A stage hands the trainer a :class:`Task` (its modules, optimizers, datasets and two step functions). The
trainer knows no scheduler system: a preemption reaches it as a flag (:class:`StopFlag`), it finishes the
current step, writes ``latest.pt`` and returns ``"preempted"``; the launcher decides about requeueing.

Exact resume: the data order is a pure function of (seed, epoch); everything else that changes during
training (weights, optimizer/scheduler/scaler state, RNG states, running sums of the epoch, history,
early-stopping state) is in the checkpoint, which is taken between steps. An interrupted and resumed CPU run
therefore ends with bit-identical weights and ``history.csv``. Wall-clock figures go to ``timing.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset, Sampler

from ctpipe import checkpoint as ckpt
from ctpipe import distributed as dist_utils
from ctpipe.atomic import atomic_write_text
from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.errors import RunFolderError, UserError
from ctpipe.schedules import EpochScheduler
from ctpipe.tensorboard_log import open_tensorboard

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class ConfigMismatchError(RunFolderError, RuntimeError):
    """A run folder's checkpoint was made with a different model/optimizer configuration."""


class NondeterministicOpError(UserError, RuntimeError):
    """``train.deterministic=true`` and an operation of the model has no deterministic kernel."""


# ---- preemption ------------------------------------------------------------------------------------
class StopFlag:
    """Set by a signal (SIGUSR2, SIGTERM) or by code; the trainer checks it after every step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.previous_handlers: dict[int, Any] = {}

    def set(self, reason: str = "requested") -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @contextlib.contextmanager
    def installed(self, signals: Sequence[int] = (signal.SIGUSR2, signal.SIGTERM),
                  interrupt: type[BaseException] | None = None) -> Iterator["StopFlag"]:
        """Route ``signals`` to this flag for the duration of the block (main thread only).

        With ``interrupt``, a signal also raises that exception in the main thread: for work that never
        checks the flag (the final evaluation), where stopping at once beats being killed part-way.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in signals}
        self.previous_handlers = dict(previous)

        def handler(signum: int, _frame: Any) -> None:
            self.set(signal.Signals(signum).name)
            if interrupt is not None:
                raise interrupt(f"stopped by {signal.Signals(signum).name}")

        for sig in signals:
            signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# ---- the stage's side ------------------------------------------------------------------------------
class Task(Protocol):
    """What a stage provides to the trainer."""

    modules: dict[str, nn.Module]          # everything trained or saved, by name
    optimizers: dict[str, Optimizer]        # by name (pix2pix: "G" and "D")
    train_set: Dataset
    val_set: Dataset | None
    fingerprint: dict[str, Any]             # model/optimizer config: resuming with another one is refused
    # optional: ``ddp_find_unused_parameters = True`` when the loss leaves some trained parameters without
    # gradient (an unsupervised output head); DDP then searches for them every step
    # optional: ``example_images(batch) -> {name: tensor}`` for the first validation sample (2D, or a volume of
    # which TensorBoard shows the middle slice), logged with ``train.tensorboard=true``

    def train_step(self, batch: Mapping[str, Any], stepper: "Stepper") -> dict[str, torch.Tensor]:
        """Forward through ``stepper.module(name)`` (the DDP/compiled wrapper of ``modules[name]``), then
        ``stepper.backward(loss, name)`` per optimizer; returns detached loss terms (scalars)."""

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample validation values, each of shape (B,); must include ``loss``."""


# ---- data order --------------------------------------------------------------------------------------
class ResumableSampler(Sampler[int]):
    """Rank-sharded sample order that is a pure function of (seed, epoch) and can start mid-epoch.

    Like DistributedSampler it pads the permutation to a multiple of the world size (training only).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def rank_indices(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world_size > 1 and self.n % self.world_size:
            extra = self.world_size - self.n % self.world_size
            order += order[:extra]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start :])

    def __len__(self) -> int:
        return max(len(self.rank_indices()) - self.start, 0)


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings/ints as lists."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


# ---- optimisation mechanics --------------------------------------------------------------------------
class Stepper:
    """AMP autocast, GradScaler, gradient accumulation and clipping for the task's optimizers."""

    def __init__(self, cfg: TrainConfig, device: torch.device, optimizers: Mapping[str, Optimizer],
                 schedulers: Mapping[str, EpochScheduler], modules: Mapping[str, nn.Module] | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.optimizers, self.schedulers = optimizers, schedulers
        self.modules = dict(modules or {})
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        use_scaler = cfg.amp == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.micro_step = 0

    def module(self, name: str) -> nn.Module:
        """The module to run forward in training: DDP-wrapped (gradients all-reduced) and/or compiled."""
        return self.modules[name]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def at_boundary(self) -> bool:
        return (self.micro_step + 1) % self.cfg.grad_accum == 0

    def backward(self, loss: torch.Tensor, name: str) -> None:
        """Backward for optimizer ``name``; steps it when the accumulation window is complete."""
        self._agree_finite(loss, name)
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        if not self.at_boundary:
            return
        optimizer = self.optimizers[name]
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.schedulers[name].after_step()

    def _agree_finite(self, loss: torch.Tensor, name: str) -> None:
        """Every rank learns whether any rank's loss is NaN/Inf before any rank enters backward (where DDP
        all-reduces gradients): all raise together instead of the healthy ranks waiting for the timeout."""
        finite = bool(torch.isfinite(loss.detach()).all())
        world = dist_utils.world_size()
        if dist_utils.group_active():
            votes = torch.zeros(world, dtype=torch.float64)
            votes[dist_utils.rank()] = float(not finite)
            bad = [r for r, v in enumerate(dist_utils.all_reduce_sum(votes).tolist()) if v > 0]
        else:
            bad = [] if finite else [0]
        if bad:
            where = f" on rank(s) {bad}" if world > 1 else ""
            raise NonFiniteLossError(f"non-finite loss{where} for optimizer {name!r} (this rank's loss: "
                                     f"{float(loss.detach().float().mean())}); training stops on every rank and "
                                     "the last good checkpoint is kept: lower the learning rate, enable "
                                     "train.grad_clip, or use train.amp=bf16 instead of fp16, then resume")

    def end_micro_step(self) -> None:
        self.micro_step += 1


# ---- progress lines ------------------------------------------------------------------------------------
class RateLog:
    """Decides when a progress line is due (every ``every`` items, and at least every ``interval_s`` seconds)
    and formats rate and ETA, so batch logs are never silent for long on slow steps."""

    def __init__(self, total: int, done: int, every: int, interval_s: float) -> None:
        self.total, self.start_done, self.done = total, done, done
        self.every, self.interval_s = max(every, 1), interval_s
        self.start = self.last = time.monotonic()

    def step(self, n: int = 1) -> bool:
        """Count ``n`` items; True when a line is due."""
        self.done += n
        now = time.monotonic()
        due = self.done % self.every == 0 or now - self.last >= self.interval_s
        if due:
            self.last = now
        return due

    def rate_eta(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{rate:.3g} it/s eta {_hms(eta)}"


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


_NONDETERMINISTIC = "does not have a deterministic implementation"


@contextlib.contextmanager
def _named_nondeterminism() -> Iterator[None]:
    """Turn torch's error for an op without a deterministic kernel into one that names the op and the fix."""
    try:
        yield
    except RuntimeError as err:
        if _NONDETERMINISTIC not in str(err):
            raise
        op = str(err).split(_NONDETERMINISTIC)[0].strip()
        raise NondeterministicOpError(
            f"train.deterministic=true, but {op} has no deterministic kernel on this device ({err}). Set "
            "train.deterministic=false (the run is then not bit-reproducible on GPU), or change the model to "
            "avoid this op") from err


def configure_determinism(enabled: bool) -> None:
    """``train.deterministic``: torch's deterministic algorithms, and the cuBLAS workspace setting that
    deterministic cuBLAS needs (set in the environment before the first CUDA/cuBLAS call)."""
    import os

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


# ---- the trainer ---------------------------------------------------------------------------------------
@dataclass
class FitResult:
    status: str  # "completed" | "early_stopped" | "segment_done" | "preempted"
    epoch: int
    best_metric: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
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


class Trainer:
    """Runs a :class:`Task` for ``cfg.epochs`` epochs in ``run_dir`` with exact, checkpointed resume."""

    def __init__(self, task: Task, cfg: TrainConfig, sched_cfg: SchedulerConfig, run_dir: str | Path,
                 device: torch.device, env: dist_utils.DistEnv | None = None, stop_flag: StopFlag | None = None,
                 config_dict: dict[str, Any] | None = None, force_resume: bool = False,
                 batch_size: int = 8, num_workers: int = 0, progress: bool | None = None) -> None:
        self.task, self.cfg, self.device = task, cfg, device
        self.env = env or dist_utils.DistEnv()
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop_flag = stop_flag or StopFlag()
        self.config_dict = config_dict or {}
        self.force_resume = force_resume
        self.batch_size, self.num_workers = batch_size, num_workers
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.sampler = ResumableSampler(len(task.train_set), shuffle=True, seed=cfg.seed,
                                        rank=self.env.rank, world_size=self.env.world_size)
        steps = math.ceil(len(self.sampler.rank_indices()) / batch_size)
        self.steps_per_epoch = min(steps, cfg.max_steps_per_epoch or steps)
        optimizer_steps = math.ceil(self.steps_per_epoch / cfg.grad_accum)
        # The configured learning rates, read before the schedulers touch the param groups: a resume with
        # --force-resume and another optim.lr compares them with the checkpoint's and applies the change.
        self.base_lrs = {name: [float(g["lr"]) for g in opt.param_groups] for name, opt in task.optimizers.items()}
        self.schedulers = {name: EpochScheduler(opt, sched_cfg, cfg.epochs, optimizer_steps)
                           for name, opt in task.optimizers.items()}
        self.train_modules = self._wrap_modules()
        self.stepper = Stepper(cfg, device, task.optimizers, self.schedulers, self.train_modules)
        self.state = self._fresh_state()
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
                find_unused = bool(getattr(self.task, "ddp_find_unused_parameters", False))
                module = nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                             find_unused_parameters=find_unused)
            if self.cfg.compile and trainable:
                module = torch.compile(module)  # type: ignore[assignment]
            wrapped[name] = module
        return wrapped

    def _fresh_state(self) -> dict[str, Any]:
        return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "bad_epochs": 0,
                "history": [], "timing": [], "epoch_sums": {}, "epoch_count": 0, "epoch_elapsed": 0.0,
                "stopped_early": False}

    # -- checkpoint ---------------------------------------------------------------------------------
    _RANK_KEYS = ("epoch_sums", "epoch_count")

    def _checkpoint_dict(self) -> dict[str, Any]:
        """The full state; per-rank parts (RNG, running sums of the epoch) are gathered from every rank."""
        mine = {"rng": ckpt.capture_rng(self.device), **{k: self.state[k] for k in self._RANK_KEYS}}
        return {
            **{k: v for k, v in self.state.items() if k not in self._RANK_KEYS},
            "rank_states": dist_utils.all_gather_objects(mine),
            "models": {n: m.state_dict() for n, m in self.task.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.task.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.stepper.scaler.state_dict(),
            "base_lrs": self.base_lrs,
            "micro_step": self.stepper.micro_step,
            "fingerprint": json.dumps(self.task.fingerprint, sort_keys=True),
            "runtime": self._runtime(),
            "config": json.dumps(self.config_dict, sort_keys=True),
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
                ckpt.save_checkpoint(state, self.ckpt_dir / f"epoch_{self.state['epoch']:03d}.pt")
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
        for name, module in self.task.modules.items():
            module.load_state_dict(saved["models"][name])
        for name, opt in self.task.optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(saved["schedulers"][name])
        self.stepper.scaler.load_state_dict(saved["scaler"])
        self.stepper.micro_step = saved["micro_step"]
        self._apply_changed_lrs(saved.get("base_lrs"), path)
        self.state = {k: saved[k] for k in self._fresh_state() if k not in self._RANK_KEYS}
        self.state.update(self._rank_state(saved["rank_states"], path))
        log.info("resumed from %s at epoch %d step %d", path, self.state["epoch"], self.state["step_in_epoch"])
        self.event("resumed", path=str(path), epoch=self.state["epoch"], step=self.state["step_in_epoch"])
        return path

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

    def _rank_state(self, rank_states: list[dict[str, Any]], path: Path) -> dict[str, Any]:
        """This rank's RNG and running sums; a different world size can only resume at an epoch boundary."""
        if len(rank_states) == self.env.world_size:
            mine = rank_states[self.env.rank]
        elif self.state["step_in_epoch"] == 0:
            log.warning("%s was written by %d rank(s), resuming on %d at an epoch boundary", path,
                        len(rank_states), self.env.world_size)
            mine = {**rank_states[0], "epoch_sums": {}, "epoch_count": 0}
        else:
            raise RuntimeError(f"{path} stopped mid-epoch with {len(rank_states)} rank(s); resume it with the same "
                               f"number of ranks (now {self.env.world_size}) to keep the run exact")
        ckpt.restore_rng(mine["rng"], self.device)
        return {k: mine[k] for k in self._RANK_KEYS}

    # -- logging ------------------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        if not self.env.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "events.jsonl", "a") as handle:
            handle.write(json.dumps({"time": time.time(), "event": kind, **fields}) + "\n")

    def _write_tables(self) -> None:
        if self.env.is_main:
            _write_csv(self.run_dir / "history.csv", self.state["history"])
            _write_csv(self.run_dir / "timing.csv", self.state["timing"])

    # -- loops --------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler: Sampler[int], batch_size: int, seed: int = 0) -> DataLoader:
        # A private generator: creating an iterator must not draw from the global RNG (it would shift dropout
        # masks after a mid-epoch resume), and worker seeds become a function of (seed, epoch).
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, generator=generator)

    def _add_terms(self, terms: Mapping[str, torch.Tensor]) -> None:
        sums = self.state["epoch_sums"]
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        self.state["epoch_count"] += 1

    def _train_epoch_means(self) -> dict[str, float]:
        keys = sorted(self.state["epoch_sums"])
        local = torch.tensor([self.state["epoch_sums"][k] for k in keys] + [self.state["epoch_count"]],
                             dtype=torch.float64)
        total = dist_utils.all_reduce_sum(local)
        count = max(total[-1].item(), 1.0)
        return {f"train_{k}": total[i].item() / count for i, k in enumerate(keys)}

    def _set_train_mode(self, training: bool) -> None:
        for module in self.task.modules.values():
            module.train(training)

    def _run_train_steps(self) -> bool:
        """Train the rest of the current epoch; returns False when stopped by the flag."""
        epoch = self.state["epoch"]
        self.sampler.set_epoch(epoch, self.state["step_in_epoch"] * self.batch_size)
        loader = self._loader(self.task.train_set, self.sampler, self.batch_size,
                              seed=self.cfg.seed * 1_000_003 + epoch)
        self._set_train_mode(True)
        start = time.monotonic()
        seen = 0
        bar = _progress(self.progress and self.env.is_main, total=self.steps_per_epoch,
                        initial=self.state["step_in_epoch"], desc=f"epoch {epoch}")
        rate = RateLog(self.steps_per_epoch, self.state["step_in_epoch"], self.cfg.log_every, self.cfg.log_interval_s)
        for batch in loader:
            if self.state["step_in_epoch"] >= self.steps_per_epoch:
                break
            batch = _to_device(batch, self.device)
            with _named_nondeterminism():
                terms = self.task.train_step(batch, self.stepper)
            self.stepper.end_micro_step()
            self._add_terms(terms)
            self.state["step_in_epoch"] += 1
            self.state["global_step"] += 1
            seen += len(batch.get("index", [0]))
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
        log.info("epoch %d step %d/%d %s lr=%.3g samples/s=%.1f %s", self.state["epoch"],
                 self.state["step_in_epoch"], self.steps_per_epoch, text, lr,
                 seen * self.env.world_size / max(elapsed, 1e-9), rate.rate_eta())
        if self.tb is not None:
            self.tb.step(self.state["global_step"], {**terms, "lr": lr})

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
            batch = _to_device(batch, self.device)
            with self.stepper.autocast(), _named_nondeterminism():
                values = self.task.eval_step(batch)
            if rate.step() and self.env.is_main:
                log.info("evaluating batch %d/%d %s", rate.done, rate.total, rate.rate_eta())
            for i, index in enumerate(batch["index"]):
                rows.append((int(index), {k: float(v[i]) for k, v in values.items()}))
        gathered = sorted((r for part in dist_utils.all_gather_objects(rows) for r in part), key=lambda r: r[0])
        keys = gathered[0][1].keys() if gathered else []
        return {k: math.fsum(r[1][k] for r in gathered) / len(gathered) for k in keys}

    def _end_epoch(self, elapsed: float) -> bool:
        """Validation, schedulers, history, checkpoints; returns True when early stopping triggers."""
        epoch = self.state["epoch"]
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
        self.state["history"].append(row)
        if self.tb is not None:
            self._log_examples(row["epoch"])
            self.tb.epoch(row["epoch"], row)
        n_samples = self.steps_per_epoch * self.batch_size * self.env.world_size
        self.state["timing"].append({"epoch": epoch + 1, "wall_s": round(elapsed, 3),
                                     "samples_per_s": round(n_samples / max(elapsed, 1e-9), 3)})
        self.state.update(epoch=epoch + 1, step_in_epoch=0, epoch_sums={}, epoch_count=0, epoch_elapsed=0.0)
        stop = (self.cfg.early_stopping_patience is not None and monitor_value is not None
                and self.state["bad_epochs"] > self.cfg.early_stopping_patience - 1)
        self.state["stopped_early"] = stop
        if improved:
            self.save("best")
        if self.cfg.checkpoint_every and self.state["epoch"] % self.cfg.checkpoint_every == 0:
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
        example = getattr(self.task, "example_images", None)
        if self.tb is None or example is None or not self.task.val_set:
            return
        self._set_train_mode(False)
        with self.stepper.autocast():
            images = example(_to_device(collate([self.task.val_set[0]]), self.device))
        self.tb.images(epoch, {k: v.detach().float().cpu().numpy() for k, v in images.items()})

    def _update_best(self, value: float | None) -> bool:
        if value is None:
            return False
        best = self.state["best_metric"]
        better = best is None or (value < best if self.cfg.monitor_mode == "min" else value > best)
        if better:
            self.state["best_metric"], self.state["bad_epochs"] = value, 0
        else:
            self.state["bad_epochs"] += 1
        return better

    def fit(self) -> FitResult:
        """Resume if possible, then train until done, early-stopped, a segment ends, or preempted."""
        self.resume()
        if not self.state["history"] and self.state["global_step"] == 0:
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.env.rank)  # e.g. distinct dropout masks per rank
        epochs_this_call = 0
        status = "completed"
        while not self.state["stopped_early"] and self.state["epoch"] < self.cfg.epochs:
            if self.cfg.segment_epochs and epochs_this_call >= self.cfg.segment_epochs:
                status = "segment_done"
                break
            started = time.monotonic() - self.state["epoch_elapsed"]
            if not self._run_train_steps():
                self.state["epoch_elapsed"] = time.monotonic() - started
                self.save("latest")
                self.event("preempted", reason=self.stop_flag.reason, epoch=self.state["epoch"],
                           step=self.state["step_in_epoch"])
                return FitResult("preempted", self.state["epoch"], self.state["best_metric"], self.state["history"])
            if self._end_epoch(time.monotonic() - started):
                status = "early_stopped"
            epochs_this_call += 1
        if status == "segment_done" and self.state["epoch"] >= self.cfg.epochs:
            status = "completed"
        if self.state["stopped_early"]:
            status = "early_stopped"
        self._write_tables()
        self.event("fit_end", status=status, epoch=self.state["epoch"])
        return FitResult(status, self.state["epoch"], self.state["best_metric"], self.state["history"])


def _progress(enabled: bool, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(disable=not enabled, leave=False, **kwargs)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
