"""torch.distributed (gloo, CPU): evaluation on 2 ranks equals 1 rank; training on 2 ranks keeps ranks in sync."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Subset

from ctpipe import distributed as dist_utils
from ctpipe.config import build_config
from ctpipe.stages.fbp_window import FBPWindowConfig, FBPWindowTask
from ctpipe.train import RunSettings, Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate(root: Path, run_dir: Path, rank: int, world: int, port: int, out: dict) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    env = dist_utils.detect_env()
    device = torch.device("cpu")
    dist_utils.init_distributed(env, device)
    cfg = build_config(FBPWindowConfig, {}, [f"data.root={root}", "data.eval_batch_size=5", "data.batch_size=5"])
    torch.manual_seed(0)
    task = FBPWindowTask(cfg, env, device)
    with torch.no_grad():  # a non-trivial window, the same on every rank
        task.model.window.coefficients[2] = 0.05
    trainer = Trainer(task, RunSettings(cfg.train, cfg.scheduler, batch_size=5), run_dir, device, env, progress=False)
    # 7 samples: the ranks get 4 and 3, so a mean of per-rank means (or DistributedSampler-style padding)
    # would differ from the 1-rank value
    result = trainer.evaluate(Subset(task.train_set, range(7)))
    if env.is_main:
        out.update(result)
    dist_utils.shutdown()


def _worker(rank: int, world: int, root: str, run_dir: str, port: int, queue) -> None:
    out: dict = {}
    _evaluate(Path(root), Path(run_dir), rank, world, port, out)
    queue.put((rank, out))


@pytest.mark.slow
def test_two_rank_validation_equals_one_rank(tiny_lodopab, tmp_path):
    single: dict = {}
    _evaluate(tiny_lodopab, tmp_path / "one", 0, 1, 0, single)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tiny_lodopab), str(tmp_path / "two"), port, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    double = results[0]
    assert set(single) == set(double) and "psnr[range=1]" in single
    for key in single:
        assert double[key] == pytest.approx(single[key], abs=1e-5, rel=1e-7), key
    assert single["loss"] > 0
