"""Trainer: exact resume after in-process interruptions, checkpoint fallback, guards."""

from __future__ import annotations

import random

import pytest
import torch

from ctpipe.checkpoint import LATEST, PREVIOUS, load_checkpoint
from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.sampler import ResumableSampler
from ctpipe.train import ConfigMismatchError, NonFiniteLossError, RunSettings, StopFlag, Trainer
from tests.toy_task import ToyTask

CFG = TrainConfig(epochs=4, seed=3, early_stopping_patience=None, log_every=1000, checkpoint_interval_s=1e9)
SCHED = SchedulerConfig(name="plateau", patience=0, factor=0.5)


def make_trainer(run_dir, task=None, cfg=CFG, sched=SCHED, flag=None):
    task = task or ToyTask()
    return Trainer(task, RunSettings(cfg, sched, batch_size=6, record={"toy": True}), run_dir, torch.device("cpu"),
                   stop_flag=flag, progress=False)


def weights(task):
    return {k: v.clone() for k, v in task.model.state_dict().items()}


def test_interrupted_run_is_bit_identical(tmp_path):
    ref_task = ToyTask()
    ref = make_trainer(tmp_path / "ref", ref_task).fit()
    assert ref.status == "completed" and len(ref.history) == 4
    # steps per epoch = ceil(40/6) = 7 -> 28 steps; stop at three random steps, one mid-epoch for sure
    rng = random.Random(11)
    stops = sorted(rng.sample(range(1, 28), 2) + [10])
    done_steps = 0
    while True:
        flag = StopFlag()
        task = ToyTask()
        remaining = [s - done_steps for s in stops if s > done_steps]
        if remaining:
            target = remaining[0]
            task.on_step = lambda n, t=target, f=flag: f.set("test") if n == t else None
        result = make_trainer(tmp_path / "run", task, flag=flag).fit()
        if result.status == "completed":
            break
        assert result.status == "preempted"
        done_steps = load_checkpoint(tmp_path / "run" / "checkpoints" / LATEST)["global_step"]
        assert done_steps in stops
    for k, v in weights(ref_task).items():
        assert torch.equal(v, task.model.state_dict()[k]), k
    assert (tmp_path / "ref" / "history.csv").read_bytes() == (tmp_path / "run" / "history.csv").read_bytes()


def test_resume_falls_back_when_latest_is_truncated(tmp_path, caplog):
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    make_trainer(tmp_path, cfg=cfg).fit()
    ckpt_dir = tmp_path / "checkpoints"
    latest = ckpt_dir / LATEST
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 3])
    prev_step = load_checkpoint(ckpt_dir / PREVIOUS)["global_step"]
    trainer = make_trainer(tmp_path, cfg=TrainConfig(**{**CFG.__dict__, "epochs": 3}))
    with caplog.at_level("WARNING"):
        path = trainer.resume()
    assert path == ckpt_dir / PREVIOUS
    assert trainer.state.global_step == prev_step
    assert "latest.pt" in caplog.text and "unreadable" in caplog.text


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 3})
    make_trainer(tmp_path, cfg=TrainConfig(**{**CFG.__dict__, "epochs": 1})).fit()
    before = (tmp_path / "checkpoints" / LATEST).read_bytes()
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        make_trainer(tmp_path, ToyTask(nan_at_step=3), cfg=cfg).fit()
    assert (tmp_path / "checkpoints" / LATEST).read_bytes() == before
    assert torch.isfinite(load_checkpoint(tmp_path / "checkpoints" / LATEST)["models"]["model"]["0.weight"]).all()


def test_resume_with_changed_model_config_is_refused(tmp_path):
    make_trainer(tmp_path, cfg=TrainConfig(**{**CFG.__dict__, "epochs": 1})).fit()
    with pytest.raises(ConfigMismatchError, match="--force-resume"):
        make_trainer(tmp_path, ToyTask(lr=0.5)).fit()
    trainer = Trainer(ToyTask(lr=0.5), RunSettings(CFG, SCHED, batch_size=6), tmp_path, torch.device("cpu"),
                      force_resume=True, progress=False)
    assert trainer.fit().status == "completed"


def test_early_stopping_and_segments(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 6, "segment_epochs": 2})
    statuses = []
    for _ in range(4):
        result = make_trainer(tmp_path, cfg=cfg).fit()
        statuses.append((result.status, result.epoch))
        if result.status == "completed":
            break
    assert statuses == [("segment_done", 2), ("segment_done", 4), ("completed", 6)]
    # lr so large that validation never improves -> early stop after patience epochs
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 20, "early_stopping_patience": 2})
    result = make_trainer(tmp_path / "es", ToyTask(lr=5.0), cfg=cfg).fit()
    assert result.status == "early_stopped" and result.epoch < 20


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    a = ResumableSampler(10, shuffle=True, seed=1)
    a.set_epoch(2)
    full = list(a)
    a.set_epoch(2, start=4)
    assert list(a) == full[4:]
    a.set_epoch(3)
    assert list(a) != full and sorted(a) == list(range(10))
    shards = []
    for rank in range(3):
        s = ResumableSampler(10, shuffle=True, seed=1, rank=rank, world_size=3)
        s.set_epoch(2)
        shards.append(list(s))
    assert all(len(x) == 4 for x in shards) and set(sum(shards, [])) == set(range(10))
    evals = [list(ResumableSampler(10, shuffle=False, seed=0, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(10))
