"""Multi-GPU failure modes reproduced on CPU with real gloo ranks.

NCCL only takes CUDA tensors. A backend registered for the ``cuda`` device type only (a real gloo backend
that torch hands CUDA tensors alone) stands in for it: under a ``cpu:gloo,cuda:cudaonly`` group every
collective of the trainer, the checkpoint and the evaluation must work, and a CPU tensor that reached the
CUDA backend would fail exactly as with NCCL ("no backend for device type cpu").
"""

from __future__ import annotations

import os
import re
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ctpipe import distributed as dist_utils
from ctpipe.checkpoint import LATEST, load_checkpoint
from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.train import NonFiniteLossError, RunSettings, StopFlag, Trainer
from tests.toy_task import ToyTask

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register_cuda_only() -> None:
    if "cudaonly" not in dist.Backend.backend_list:
        dist.Backend.register_backend(
            "cudaonly", lambda store, rank, size, timeout: dist.ProcessGroupGloo(store, rank, size, timeout),
            devices=["cuda"])


def _spawn(target, world: int, *args, timeout: float = 240.0) -> dict[int, object]:
    """Run ``target(rank, world, port, *args)`` on ``world`` real processes; returns each rank's result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(target, rank, world, port, queue, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return results


def _entry(target, rank: int, world: int, port: int, queue, *args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        queue.put((rank, target(rank, *args)))
    except BaseException as err:  # report, never hang the parent
        queue.put((rank, ("error", type(err).__name__, str(err), traceback.format_exc())))
    finally:
        dist_utils.shutdown()


CFG = TrainConfig(epochs=2, seed=4, early_stopping_patience=None, log_every=1000, checkpoint_interval_s=0.0)


def _trainer(run_dir: str, task, env, cfg=CFG) -> Trainer:
    settings = RunSettings(cfg, SchedulerConfig(name="cosine"), batch_size=4, record={"toy": True})
    return Trainer(task, settings, run_dir, torch.device("cpu"), env, StopFlag(), progress=False)


# ---- item 1: one backend per device type ------------------------------------------------------------------
def test_a_cuda_device_gets_gloo_for_cpu_tensors_and_nccl_for_cuda_tensors():
    assert dist_utils.backend_spec(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert dist_utils.backend_spec(torch.device("cpu")) == "gloo"
    assert dist_utils.backend_spec(torch.device("cuda", 1), cuda_backend="gloo") == "cpu:gloo,cuda:gloo"


def test_no_other_module_calls_torch_distributed():
    """One module owns the collectives, so none can hand a CPU tensor to a CUDA-only backend behind its back."""
    offenders = []
    for path in (REPO / "ctpipe").rglob("*.py"):
        if path.name == "distributed.py":
            continue
        text = path.read_text()
        if re.search(r"torch\.distributed|from torch import distributed|\bdist\.(all_|barrier|broadcast|reduce|"
                     r"gather|scatter|send|recv|init_process_group)", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _all_collectives_under_cuda_only(rank: int, run_dir: str) -> dict:
    _register_cuda_only()
    env = dist_utils.detect_env()
    dist_utils.init_distributed(env, torch.device("cpu"), timeout_s=60, cuda_backend="cudaonly")
    # the restricted backend alone really refuses a CPU tensor (the failure NCCL gives), so this test can fail
    cuda_only = dist.new_group(backend="cudaonly")
    try:
        dist.all_reduce(torch.ones(2, dtype=torch.float64), group=cuda_only)
        refused = False
    except RuntimeError as err:
        refused = "cpu" in str(err)
    task = ToyTask(n_train=24)
    result = _trainer(run_dir, task, env).fit()  # votes, epoch sums, NaN agreement, gathered RNG states, eval
    resumed = _trainer(run_dir, ToyTask(n_train=24), env, TrainConfig(**{**CFG.__dict__, "epochs": 3}))
    resumed.fit()  # resume: agreement on the checkpoint path
    val = resumed.evaluate(task.val_set)
    dist_utils.barrier()
    dist_utils.wait_for_all()
    token = dist_utils.broadcast_object(f"from {rank}")
    total = float(sum(p.double().sum() for p in resumed.task.model.parameters()))
    return {"refused": refused, "status": result.status, "val": val["loss"], "token": token, "weights": total}


@pytest.mark.slow
def test_every_collective_works_when_the_cuda_backend_refuses_cpu_tensors(tmp_path):
    results = _spawn(_all_collectives_under_cuda_only, 2, str(tmp_path))
    for rank in (0, 1):
        assert isinstance(results[rank], dict), results[rank]
    assert results[0]["refused"] and results[1]["refused"]
    assert results[0]["status"] == "completed"
    assert results[0]["token"] == results[1]["token"] == "from 0"
    assert results[0]["weights"] == results[1]["weights"] and results[0]["val"] == results[1]["val"]
    assert load_checkpoint(tmp_path / "checkpoints" / LATEST)["epoch"] == 3


# ---- item 2: rank-0 evaluation longer than the process-group timeout ----------------------------------
class _SlowEvaluation:
    """A stage whose final evaluation (rank 0 only, as the real stages do) outlasts the group timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def final_evaluation(self, cfg, task, run_dir, device, env) -> None:
        if env.is_main:
            time.sleep(self.seconds)
            Path(run_dir, "evaluated").write_text("yes")


def _file_rendezvous(folder: Path, rank: int, world: int) -> None:
    (folder / f"ready.{rank}").touch()
    while len(list(folder.glob("ready.*"))) < world:
        time.sleep(0.01)


def _slow_final_evaluation(rank: int, run_dir: str) -> dict:
    from ctpipe.runner import _evaluate_then_wait

    env = dist_utils.detect_env()
    _file_rendezvous(Path(run_dir), rank, 2)  # start together: the 2 s timeout also bounds the set-up
    dist_utils.init_distributed(env, torch.device("cpu"), timeout_s=2.0)
    started = time.monotonic()
    done = _evaluate_then_wait(_SlowEvaluation(6.0), None, None, Path(run_dir), torch.device("cpu"), env,
                               StopFlag())
    waited = time.monotonic() - started
    dist_utils.barrier()  # the short-timeout group still works afterwards
    return {"done": done, "waited": waited}


@pytest.mark.slow
def test_final_evaluation_may_outlast_the_process_group_timeout(tmp_path):
    results = _spawn(_slow_final_evaluation, 2, str(tmp_path))
    assert isinstance(results[1], dict), results[1]
    assert results[0]["done"] and results[1]["done"]
    assert results[1]["waited"] >= 5.5  # rank 1 waited for rank 0's 6 s evaluation, past the 2 s timeout
    assert (tmp_path / "evaluated").read_text() == "yes"


# ---- item 3: NaN on one rank only -----------------------------------------------------------------------
def _nan_on_rank_one(rank: int, run_dir: str) -> dict:
    env = dist_utils.detect_env()
    dist_utils.init_distributed(env, torch.device("cpu"), timeout_s=30.0)
    task = ToyTask(n_train=48, nan_at_step=3 if rank == 1 else None)
    started = time.monotonic()
    try:
        _trainer(run_dir, task, env).fit()
        return {"raised": None}
    except NonFiniteLossError as err:
        return {"raised": str(err), "after": time.monotonic() - started}


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_at_once(tmp_path):
    results = _spawn(_nan_on_rank_one, 2, str(tmp_path))
    for rank in (0, 1):
        assert isinstance(results[rank], dict) and results[rank]["raised"], results[rank]
        assert "rank(s) [1]" in results[rank]["raised"]
        assert results[rank]["after"] < 20  # not the 30 s process-group timeout
    latest = load_checkpoint(tmp_path / "checkpoints" / LATEST)
    assert latest["global_step"] == 2  # the last good step (a save after every step)
    assert all(torch.isfinite(v).all() for v in latest["models"]["model"].values())


# ---- item 4: an output head without gradient under DDP ------------------------------------------------
def _unused_head(rank: int, run_dir: str, find_unused: bool) -> dict:
    env = dist_utils.detect_env()
    dist_utils.init_distributed(env, torch.device("cpu"), timeout_s=30.0)
    return {"status": _trainer(run_dir, _TwoHeadModel.task(find_unused), env).fit().status}


class _TwoHeadModel(nn.Module):
    """body -> (prediction, aux head on the prediction); the loss uses the prediction only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.aux = nn.Linear(1, 1)

    def forward(self, x):
        pred = self.body(x)
        return pred, self.aux(pred)

    @staticmethod
    def task(find_unused: bool):
        from ctpipe.config import OptimConfig
        from ctpipe.schedules import build_optimizer

        task = ToyTask(n_train=32, dropout=0.0)
        task.model = _TwoHeadModel()
        task.modules = {"model": task.model}
        task.optimizers = {"model": build_optimizer(task.model.parameters(), OptimConfig(lr=1e-2))}
        task.ddp_find_unused_parameters = find_unused

        def train_step(batch, stepper):
            with stepper.autocast():
                pred, _aux = stepper.module("model")(batch["x"])
                loss = nn.functional.mse_loss(pred, batch["y"])
            stepper.backward(loss, "model")
            return {"loss": loss.detach()}

        task.train_step = train_step
        task.eval_step = lambda batch: {"loss": ((task.model(batch["x"])[0] - batch["y"]) ** 2).flatten(1).mean(1)}
        return task


@pytest.mark.slow
def test_a_head_without_gradient_trains_under_ddp_when_the_task_says_so(tmp_path):
    results = _spawn(_unused_head, 2, str(tmp_path / "flagged"), True)
    assert results[0] == results[1] == {"status": "completed"}
    # the control: without the flag DDP raises at step 2 (the failure the stages' flag prevents)
    results = _spawn(_unused_head, 2, str(tmp_path / "plain"), False)
    assert results[0][0] == "error" and "did not receive grad" in results[0][2] + results[0][3], results[0]


def test_stages_flag_heads_without_gradient():
    assert dist_utils.ddp_find_unused((0.5, 1.0), 3)          # direct_256: fewer weights than heads
    assert dist_utils.ddp_find_unused((0.0, 1.0), 2)          # stage1_64: a zero weight
    assert dist_utils.ddp_find_unused((0.5, 1.0), 3)          # refine_256: 2 weights, 4x target (3 outputs)
    assert not dist_utils.ddp_find_unused((0.25, 0.5, 1.0), 3)
