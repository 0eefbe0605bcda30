"""Resume on GPU clusters: one checkpoint read per rank, lost history refused, AMP/device checked, only the
rank's own CUDA generator saved; train.deterministic; progress lines with rate and ETA."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch
from torch import nn

from ctpipe import checkpoint as ckpt
from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.train import (ConfigMismatchError, NondeterministicOpError, RunFolderError, RunSettings, Trainer,
                          configure_determinism)
from tests.toy_task import ToyTask

CFG = TrainConfig(epochs=2, seed=3, early_stopping_patience=None, log_every=1000, checkpoint_interval_s=1e9,
                  checkpoint_every=1)
SCHED = SchedulerConfig(name="cosine")


def make_trainer(run_dir, task=None, cfg=CFG):
    return Trainer(task or ToyTask(), RunSettings(cfg, SCHED, batch_size=6, record={"toy": True}), run_dir,
                   torch.device("cpu"), progress=False)


def with_(cfg: TrainConfig, **changes) -> TrainConfig:
    return TrainConfig(**{**cfg.__dict__, **changes})


# ---- one checkpoint read per rank -----------------------------------------------------------------------
def test_resume_reads_only_the_newest_readable_checkpoint(tmp_path, monkeypatch):
    make_trainer(tmp_path).fit()
    ckpt_dir = tmp_path / "checkpoints"
    assert {p.name for p in ckpt_dir.glob("*.pt")} >= {"latest.pt", "previous.pt", "epoch_001.pt", "epoch_002.pt"}
    loaded: list[str] = []
    real_load = torch.load

    def counting_load(path, *args, **kwargs):
        loaded.append(os.path.basename(str(path)))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    trainer = make_trainer(tmp_path, cfg=with_(CFG, epochs=3))
    assert trainer.resume() == ckpt_dir / ckpt.LATEST
    assert loaded == ["latest.pt"] and trainer.state.epoch == 2
    # a damaged latest.pt costs one more read, not all of them
    data = (ckpt_dir / ckpt.LATEST).read_bytes()
    (ckpt_dir / ckpt.LATEST).write_bytes(data[: len(data) // 2])
    loaded.clear()
    path = make_trainer(tmp_path, cfg=with_(CFG, epochs=3)).resume()
    assert loaded[0] == "latest.pt" and len(loaded) == 2 and path is not None and path.name == loaded[1]


# ---- unreadable checkpoints in a folder with history ------------------------------------------------------
def test_unreadable_checkpoints_with_history_are_refused_and_best_is_kept(tmp_path):
    make_trainer(tmp_path, cfg=with_(CFG, checkpoint_every=0)).fit()
    ckpt_dir = tmp_path / "checkpoints"
    best = (ckpt_dir / ckpt.BEST).read_bytes()
    for name in (ckpt.LATEST, ckpt.PREVIOUS):
        (ckpt_dir / name).write_bytes(b"not a checkpoint")
    with pytest.raises(RunFolderError) as err:
        make_trainer(tmp_path, cfg=with_(CFG, epochs=3, checkpoint_every=0)).fit()
    message = str(err.value)
    assert "latest.pt" in message and "previous.pt" in message and "--restart" in message
    assert "history.csv" in message
    assert (ckpt_dir / ckpt.BEST).read_bytes() == best  # not overwritten by a model trained anew


def test_restart_archives_the_old_run_and_starts_anew(tmp_path):
    make_trainer(tmp_path, cfg=with_(CFG, epochs=1)).fit()
    (tmp_path / "checkpoints" / ckpt.LATEST).write_bytes(b"broken")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    archive = ckpt.archive_run(tmp_path, stamp="20260101T000000Z")
    assert archive == tmp_path / "archive-20260101T000000Z"
    assert sorted(p.relative_to(archive) for p in archive.rglob("*") if p.is_file()) == before
    result = make_trainer(tmp_path, cfg=with_(CFG, epochs=1)).fit()
    assert result.status == "completed" and (tmp_path / "history.csv").exists()
    assert ckpt.archive_run(tmp_path / "missing") is None


def test_cli_train_has_restart():
    from ctpipe.cli import build_parser

    args = build_parser().parse_args(["train", "toy", "--run-dir", "x", "--restart"])
    assert args.restart


# ---- AMP mode and device in the resume check ------------------------------------------------------------
def test_resume_with_another_amp_mode_or_device_is_refused(tmp_path):
    make_trainer(tmp_path, cfg=with_(CFG, epochs=1, amp="bf16")).fit()
    with pytest.raises(ConfigMismatchError, match='"amp": "bf16"') as err:
        make_trainer(tmp_path, cfg=with_(CFG, amp="none")).fit()
    assert "train.amp" in str(err.value)
    # a checkpoint written on CUDA (its runtime entry says so) is refused on the CPU
    latest = tmp_path / "checkpoints" / ckpt.LATEST
    state = ckpt.load_checkpoint(latest)
    state["runtime"] = state["runtime"].replace('"cpu"', '"cuda"')
    ckpt.save_checkpoint(state, latest)
    with pytest.raises(ConfigMismatchError, match='"device": "cuda"'):
        make_trainer(tmp_path, cfg=with_(CFG, amp="bf16")).fit()
    assert make_trainer(tmp_path / "fresh", cfg=with_(CFG, epochs=1, amp="bf16")).fit().status == "completed"


# ---- CUDA RNG of the rank's own device only ---------------------------------------------------------------
class _Gpus:
    """Stands in for torch.cuda's generator registry on a CPU machine: ``count`` visible devices."""

    def __init__(self, count: int) -> None:
        self.states = [torch.tensor([i, 7], dtype=torch.uint8) for i in range(count)]

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_all)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[_index(device)].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_one)

    def set_all(self, states) -> None:
        if len(states) > len(self.states):
            raise RuntimeError("invalid device ordinal")  # what torch.cuda raises for a missing device
        for i, s in enumerate(states):
            self.states[i] = s.clone()

    def set_one(self, state, device="cuda") -> None:
        self.states[_index(device)] = state.clone()


def _index(device) -> int:
    return torch.device(device).index or 0


def test_cuda_rng_of_the_ranks_own_device_only(monkeypatch):
    four = _Gpus(4)
    four.install(monkeypatch)
    four.states[2] = torch.tensor([42, 42], dtype=torch.uint8)
    saved = ckpt.capture_rng(torch.device("cuda", 2))  # rank 2 of a 4-GPU node
    one = _Gpus(1)  # resumed where each task sees one GPU
    one.install(monkeypatch)
    ckpt.restore_rng(saved, torch.device("cuda", 0))
    assert torch.equal(one.states[0], torch.tensor([42, 42], dtype=torch.uint8))
    assert not any("cuda" in k and k != "cuda_device" for k in saved)


@pytest.mark.cuda
def test_cuda_rng_round_trip_on_the_device():
    device = torch.device("cuda", torch.cuda.current_device())
    saved = ckpt.capture_rng(device)
    first = torch.rand(4, device=device)
    ckpt.restore_rng(saved, device)
    assert torch.equal(torch.rand(4, device=device), first)


# ---- train.deterministic ----------------------------------------------------------------------------------
class _UnpoolTask(ToyTask):
    """The toy regression through max_unpool1d, which has no deterministic CPU kernel."""

    def train_step(self, batch, stepper):
        x = batch["x"].unsqueeze(1)
        pooled, idx = nn.functional.max_pool1d(x, 2, return_indices=True)
        x = nn.functional.max_unpool1d(pooled, idx, 2).squeeze(1)
        loss = nn.functional.mse_loss(stepper.module("model")(x), batch["y"])
        stepper.backward(loss, "model")
        return {"loss": loss.detach()}


def test_deterministic_mode_names_the_op_without_a_deterministic_kernel(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        with pytest.raises(NondeterministicOpError, match="max_unpool.*train.deterministic=false"):
            make_trainer(tmp_path, _UnpoolTask(), cfg=with_(CFG, deterministic=True)).fit()
        assert make_trainer(tmp_path / "ok", cfg=with_(CFG, epochs=1, deterministic=True)).fit().status == "completed"
    finally:
        configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()


# ---- progress lines ----------------------------------------------------------------------------------
def test_training_and_evaluation_log_rate_and_eta_on_slow_steps(tmp_path, caplog):
    task = ToyTask(n_train=18, n_val=18, on_step=lambda _n: time.sleep(0.12))
    slow_eval = task.eval_step

    def eval_step(batch):
        time.sleep(0.12)
        return slow_eval(batch)

    task.eval_step = eval_step
    cfg = with_(CFG, epochs=1, log_every=10_000, log_interval_s=0.1, checkpoint_every=0)
    with caplog.at_level(logging.INFO, logger="ctpipe.train"):
        Trainer(task, RunSettings(cfg, SCHED, batch_size=3), tmp_path, torch.device("cpu"), progress=False).fit()
    steps = [r.getMessage() for r in caplog.records if "step" in r.getMessage() and "eta" in r.getMessage()]
    evals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluating batch")]
    assert len(steps) >= 4 and "samples/s" in steps[0] and "eta 0:00:0" in steps[0]
    assert len(evals) >= 4 and "eta" in evals[0]


@pytest.mark.cuda
def test_cuda_deterministic_resume_is_bit_identical(tmp_path):
    """On the GPU with train.deterministic: an interrupted and resumed run equals an uninterrupted one."""
    from ctpipe.train import StopFlag

    device = torch.device("cuda", torch.cuda.current_device())
    cfg = with_(CFG, epochs=2, deterministic=True, device="cuda", checkpoint_every=0)

    def run(run_dir, stop_at=None):
        flag = StopFlag()
        task = ToyTask(on_step=(lambda n: flag.set("test") if n == stop_at else None))
        trainer = Trainer(task, RunSettings(cfg, SCHED, batch_size=6), run_dir, device, stop_flag=flag, progress=False)
        return trainer.fit(), task

    configure_determinism(True)
    try:
        _, reference = run(tmp_path / "ref")
        first, _ = run(tmp_path / "run", stop_at=5)
        assert first.status == "preempted"
        second, resumed = run(tmp_path / "run")
        assert second.status == "completed"
    finally:
        configure_determinism(False)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert (tmp_path / "ref" / "history.csv").read_bytes() == (tmp_path / "run" / "history.csv").read_bytes()


@pytest.mark.slow
def test_run_stage_refuses_lost_history_and_restart_archives_it(tiny_lodopab, tmp_path):
    from ctpipe.runner import run_stage

    run = tmp_path / "run"
    args = [f"data.root={tiny_lodopab}", "data.batch_size=8", "train.epochs=1", "train.early_stopping_patience=null",
            "train.device=cpu"]
    assert run_stage("fbp_window", run, args).status == "completed"
    for path in (run / "checkpoints").glob("*.pt"):
        if path.name != ckpt.BEST:
            path.write_bytes(b"damaged")
    best = (run / "checkpoints" / ckpt.BEST).read_bytes()
    with pytest.raises(RunFolderError, match="--restart"):
        run_stage("fbp_window", run, args)
    assert (run / "checkpoints" / ckpt.BEST).read_bytes() == best
    result = run_stage("fbp_window", run, args, restart=True)
    assert result.status == "completed"
    archives = list(run.glob("archive-*"))
    assert len(archives) == 1 and (archives[0] / "checkpoints" / ckpt.BEST).read_bytes() == best
    assert (archives[0] / "history.csv").exists() and (run / "history.csv").exists()
