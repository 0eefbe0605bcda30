"""Process-group set-up from the environment (torchrun | SLURM/submitit | single process) and rank helpers."""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


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
        from submitit.helpers import TorchDistributedEnvironment

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


def init_distributed(env: DistEnv, device: torch.device, timeout_s: float = 600.0) -> None:
    """Initialise the default process group (nccl on GPU, gloo on CPU) when running on several ranks."""
    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 CPU tensor over ranks (returns a new tensor; identity on one rank)."""
    if world_size() == 1:
        return values.clone()
    out = values.detach().to(torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object per rank, in rank order (a list with ``obj`` on one rank)."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
