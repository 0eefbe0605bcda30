"""Process-group set-up from the environment (torchrun | SLURM/submitit | single process) and rank helpers.

This module owns every collective ctpipe calls: no other module uses ``torch.distributed`` directly
(tests/test_distributed_backends.py checks both the rule and the collectives under a CUDA-only backend).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from submitit.helpers import TorchDistributedEnvironment


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # "torchrun" | "slurm" | "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect_env() -> DistEnv:
    """Read the launcher's environment: torchrun first, then SLURM (srun/submitit), else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        tde = TorchDistributedEnvironment().export(overwrite=True)
        return DistEnv(tde.rank, tde.world_size, tde.local_rank, "slurm")
    return DistEnv()


def pick_device(preference: str, env: DistEnv) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda was requested but no CUDA device is visible; use train.device=cpu")
    index = env.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def backend_spec(device: torch.device, cuda_backend: str | None = None) -> str:
    """The process group's backends: gloo for CPU tensors always, plus ``cuda_backend`` (on a CUDA device:
    ``$CTPIPE_CUDA_BACKEND``, default nccl; gloo lets several ranks share one GPU) for CUDA tensors.

    Every collective of ctpipe's own bookkeeping (stop/save votes, epoch sums, gathered evaluation rows,
    checkpoint RNG states, barriers) runs on CPU tensors or objects, and NCCL only reduces CUDA tensors; a
    group with one backend per device type routes each tensor to a backend that can take it.
    """
    if cuda_backend is None and device.type == "cuda":
        cuda_backend = os.environ.get("CTPIPE_CUDA_BACKEND", "nccl")
    return "gloo" if cuda_backend is None else f"cpu:gloo,cuda:{cuda_backend}"


_WAIT_GROUP: Any = None
# A separate gloo group for waiting on work of unbounded length (rank 0's final evaluation): its timeout is a
# week, and the wait polls, so a signal still reaches the waiting rank.
WAIT_TIMEOUT = datetime.timedelta(days=7)


def init_distributed(env: DistEnv, device: torch.device, timeout_s: float = 600.0,
                     cuda_backend: str | None = None, force: bool = False) -> None:
    """Initialise the default process group when running on several ranks (see :func:`backend_spec`).

    ``force`` starts a group on one rank too (MASTER_ADDR/MASTER_PORT set), so that a single GPU exercises
    every collective and the DDP wrapper exactly as a multi-GPU job does (``make gpu-check``)."""
    global _WAIT_GROUP
    if not (env.distributed or force) or dist.is_initialized():
        return
    dist.init_process_group(
        backend=backend_spec(device, cuda_backend),
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    _WAIT_GROUP = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def shutdown() -> None:
    global _WAIT_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WAIT_GROUP = None


def group_active() -> bool:
    """A process group is running (several ranks, or one rank forced through the distributed path)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if group_active() else 1


def rank() -> int:
    return dist.get_rank() if group_active() else 0


def barrier() -> None:
    """All ranks meet (on the CPU backend); bounded by the process-group timeout."""
    if group_active():
        dist.barrier()


def wait_for_all(poll_s: float = 0.2) -> None:
    """A barrier without the process-group timeout: for ranks that wait while another does long work (rank 0's
    final evaluation may take longer than the timeout). Polls, so signal handlers run while waiting."""
    if not group_active():
        return
    work = dist.barrier(group=_WAIT_GROUP, async_op=True)
    while not work.is_completed():
        time.sleep(poll_s)
    work.wait()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks as float64 on the CPU (returns a new CPU tensor; a copy on one rank)."""
    out = values.detach().to("cpu", torch.float64).clone()
    if group_active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object per rank, in rank order (a list with ``obj`` on one rank)."""
    if not group_active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not group_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def ddp_find_unused(scale_weights: tuple[float, ...], n_outputs: int) -> bool:
    """True when a multi-scale loss leaves an output head without gradient (fewer weights than outputs, or a
    zero weight): DDP must then search for unused parameters, or it raises on the second step."""
    return len(scale_weights) < n_outputs or any(w == 0 for w in scale_weights)
