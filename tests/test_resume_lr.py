"""--force-resume with another learning rate: the run continues with the new rate, and says so."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.train import ConfigMismatchError, RunSettings, Trainer
from tests.toy_task import ToyTask

CFG = TrainConfig(epochs=4, seed=3, early_stopping_patience=None, log_every=1000, checkpoint_interval_s=1e9)
SCHEDULES = {
    "constant": SchedulerConfig(name="none"),
    "cosine": SchedulerConfig(name="cosine", min_lr=1e-4),
    "onecycle": SchedulerConfig(name="onecycle"),
    "linear_decay": SchedulerConfig(name="linear_decay", n_epochs_constant=1),
}


def fit(run_dir, lr, sched, epochs, force_resume=False):
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 4, "segment_epochs": epochs})
    trainer = Trainer(ToyTask(lr=lr), RunSettings(cfg, sched, batch_size=6, record={"toy": True}), run_dir,
                      torch.device("cpu"), force_resume=force_resume, progress=False)
    return trainer, trainer.fit()


def lrs(run_dir):
    with open(run_dir / "history.csv") as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_forced_lr_change_follows_the_new_rate(tmp_path, name):
    sched = SCHEDULES[name]
    ref_trainer, _ = fit(tmp_path / "ref", 2e-2, sched, 4)
    fit(tmp_path / "run", 1e-2, sched, 2)
    with pytest.raises(ConfigMismatchError):  # the fingerprint holds the lr: without --force-resume, refused
        fit(tmp_path / "run", 2e-2, sched, 2)
    trainer, _ = fit(tmp_path / "run", 2e-2, sched, 2, force_resume=True)
    ref, run = lrs(tmp_path / "ref"), lrs(tmp_path / "run")
    assert run[2:] == pytest.approx(ref[2:], rel=1e-12, abs=0)
    assert run[:2] != pytest.approx(ref[:2], rel=1e-3)  # the first segment really ran at the old rate
    final = [t.task.optimizers["model"].param_groups[0]["lr"] for t in (trainer, ref_trainer)]
    assert final[0] == pytest.approx(final[1], rel=1e-12)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    changed = [e for e in events if e["event"] == "lr_changed"]
    assert len(changed) == 1
    assert changed[0]["old_base_lr"] == [1e-2] and changed[0]["new_base_lr"] == [2e-2]


def test_plateau_scales_the_current_rate_and_keeps_its_floor(tmp_path):
    sched = SchedulerConfig(name="plateau", patience=0, factor=0.5, min_lr=4e-3)
    fit(tmp_path / "run", 1e-2, sched, 2)
    before = lrs(tmp_path / "run")[-1]
    trainer, _ = fit(tmp_path / "run", 2e-2, sched, 2, force_resume=True)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    changed = [e for e in events if e["event"] == "lr_changed"][0]
    assert changed["lr_now"] == [pytest.approx(max(2 * before, 4e-3))]


def test_same_lr_records_no_change(tmp_path):
    fit(tmp_path / "run", 1e-2, SCHEDULES["cosine"], 2)
    fit(tmp_path / "run", 1e-2, SCHEDULES["cosine"], 2)
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert "lr_changed" not in events and '"resumed"' in events
