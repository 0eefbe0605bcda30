"""Trainer overheads: checkpoint save/load time and size for a ~15M-parameter model (with Adam state), and
the per-step cost of the preemption machinery (stop/save agreement) relative to a training step.

Run: ``python -m benchmarks.trainer`` (CPU here; CUDA is used for the step when available).
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ctpipe import checkpoint as ckpt
from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.distributed import DistEnv
from ctpipe.models.xray2ct import XRay2CT64, XRay2CTConfig


class _StepTask:
    """XRay2CT64 at its default size (15.34M parameters), one optimizer."""

    def __init__(self, device: torch.device, batch: int) -> None:
        self.model = XRay2CT64(XRay2CTConfig()).to(device)
        self.modules = {"model": self.model}
        self.optimizers = {"model": torch.optim.AdamW(self.model.parameters(), lr=1e-4)}
        self.train_set, self.val_set, self.fingerprint = list(range(batch)), None, {}
        size = XRay2CTConfig().xray_size
        self.x = torch.rand(batch, 2, size, size, device=device)
        self.y = torch.rand(batch, 1, 64, 64, 64, device=device)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checkpoint_io(device: torch.device) -> dict[str, float]:
    from ctpipe.train import RunSettings, Trainer

    task = _StepTask(device, batch=1)
    step = lambda: _train_step(task)  # noqa: E731
    step()  # creates the Adam state so the checkpoint is complete
    with tempfile.TemporaryDirectory() as tmp:
        settings = RunSettings(TrainConfig(epochs=1), SchedulerConfig(name="cosine"), batch_size=1)
        trainer = Trainer(task, settings, tmp, device, progress=False)
        save_s = _median_time(lambda: trainer.save("latest"), 3)
        path = Path(tmp) / "checkpoints" / ckpt.LATEST
        load_s = _median_time(lambda: ckpt.load_checkpoint(path), 3)
        size = path.stat().st_size
    params = sum(p.numel() for p in task.model.parameters())
    return {"parameters": params, "bytes": size, "save_s": save_s, "load_s": load_s}


def _train_step(task: _StepTask) -> None:
    loss = torch.nn.functional.l1_loss(task.model(task.x), task.y)
    loss.backward()
    task.optimizers["model"].step()
    task.optimizers["model"].zero_grad(set_to_none=True)


def _agree_cost(world: int, rank: int, port: int, out) -> None:
    """Seconds per call of the per-step stop/save agreement on ``world`` gloo ranks."""
    from ctpipe import distributed as dist_utils
    from ctpipe.train import StopFlag, Trainer

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
        dist_utils.init_distributed(DistEnv(rank, world, rank, "torchrun"), torch.device("cpu"))
    trainer = Trainer.__new__(Trainer)  # only the agreement method and its three fields are exercised
    trainer.env, trainer.stop_flag = DistEnv(rank, world, rank, "bench"), StopFlag()
    trainer.cfg, trainer._last_save = TrainConfig(checkpoint_interval_s=1e9), time.monotonic()
    for _ in range(50):
        trainer._agree_on_stop_and_save()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        trainer._agree_on_stop_and_save()
    per_call = (time.perf_counter() - start) / n
    if rank == 0:
        out.put(per_call)
    dist_utils.shutdown()


def agreement_cost(world: int) -> float:
    if world == 1:
        queue: mp.Queue = mp.get_context("spawn").SimpleQueue()  # type: ignore[assignment]
        _agree_cost(1, 0, 0, queue)
        return queue.get()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_agree_cost, args=(world, r, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get()
    for p in procs:
        p.join()
    return result


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    io = checkpoint_io(device)
    print(f"checkpoint of XRay2CT64 ({io['parameters'] / 1e6:.2f}M params + AdamW state): "
          f"{io['bytes'] / 2**20:.1f} MiB, save {io['save_s'] * 1e3:.0f} ms, load {io['load_s'] * 1e3:.0f} ms "
          f"({device.type})")
    task = _StepTask(device, batch=1)
    _train_step(task)
    step_s = _median_time(lambda: _train_step(task), 3)
    for world in (1, 2):
        cost = agreement_cost(world)
        print(f"preemption machinery, {world} rank(s): {cost * 1e6:.1f} us per step = "
              f"{100 * cost / step_s:.4f}% of a {step_s * 1e3:.0f} ms XRay2CT64 step (batch 1, {device.type})")


if __name__ == "__main__":
    main()
