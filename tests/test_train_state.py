"""The trainer's typed state: checkpoints in the dict shape ctpipe has always written resume bit-identically,
incomplete ones are refused before anything changes, and the stage boundary (Task, ``index``) is checked."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.data import Dataset

from ctpipe.checkpoint import LATEST, load_checkpoint
from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.errors import RunFolderError
from ctpipe.task import TASK_MEMBERS, Task, TaskContractError
from ctpipe.train import RunSettings, StopFlag, Trainer
from ctpipe.train_state import RankState, TrainState
from tests.toy_task import ToyTask

CFG = TrainConfig(epochs=3, seed=3, early_stopping_patience=None, log_every=1000, checkpoint_interval_s=1e9)
SETTINGS = RunSettings(CFG, SchedulerConfig(name="plateau", patience=0, factor=0.5), batch_size=6,
                       record={"toy": True})

# The checkpoint dict as ctpipe wrote it before the state became dataclasses (written out here, not derived
# from the code under test): training state at the top level, per-rank parts in "rank_states".
OLD_STATE_KEYS = ("epoch", "step_in_epoch", "global_step", "best_metric", "bad_epochs", "history", "timing",
                  "epoch_elapsed", "stopped_early")
OLD_OBJECT_KEYS = ("models", "optimizers", "schedulers", "scaler", "micro_step", "fingerprint", "config")
OLD_RANK_KEYS = ("rng", "epoch_sums", "epoch_count")
LATER_KEYS = ("base_lrs", "runtime")  # added later; files without them must resume too


def fit(run_dir, task, flag=None):
    return Trainer(task, SETTINGS, run_dir, torch.device("cpu"), stop_flag=flag, progress=False).fit()


def interrupted_at(run_dir, step):
    flag = StopFlag()
    task = ToyTask(on_step=lambda n: flag.set("test") if n == step else None)
    assert fit(run_dir, task, flag).status == "preempted"
    return run_dir / "checkpoints" / LATEST


def old_shape(saved, keys):
    ranks = [{k: r[k] for k in OLD_RANK_KEYS} for r in saved["rank_states"]]
    return {**{k: saved[k] for k in keys}, "rank_states": ranks}


@pytest.mark.parametrize("keys", [OLD_STATE_KEYS + OLD_OBJECT_KEYS + LATER_KEYS, OLD_STATE_KEYS + OLD_OBJECT_KEYS],
                         ids=["today", "before-base-lrs"])
def test_a_checkpoint_in_the_old_dict_shape_resumes_bit_identically(tmp_path, keys):
    reference = ToyTask()
    fit(tmp_path / "ref", reference)
    latest = interrupted_at(tmp_path / "run", 10)  # 7 steps per epoch: mid-epoch 2, with running sums
    saved = load_checkpoint(latest)
    assert saved["step_in_epoch"] == 3 and saved["rank_states"][0]["epoch_count"] == 3
    torch.save(old_shape(saved, keys), latest)
    resumed = ToyTask()
    assert fit(tmp_path / "run", resumed).status == "completed"
    for name, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert (tmp_path / "ref" / "history.csv").read_bytes() == (tmp_path / "run" / "history.csv").read_bytes()
    assert set(load_checkpoint(latest)) >= set(keys) | {"rank_states"}  # and new files keep the old shape


@pytest.mark.parametrize("drop", ["epoch_elapsed", "rank_states", "rank_states.epoch_sums", "rank_states.rng"])
def test_a_checkpoint_without_training_state_is_refused_before_anything_changes(tmp_path, drop):
    latest = interrupted_at(tmp_path, 4)
    saved = load_checkpoint(latest)
    if drop.startswith("rank_states."):
        for entry in saved["rank_states"]:
            del entry[drop.split(".")[1]]
    else:
        del saved[drop]
    torch.save(saved, latest)
    task = ToyTask()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = Trainer(task, SETTINGS, tmp_path, torch.device("cpu"), progress=False)
    with pytest.raises(RunFolderError, match=rf"{drop.split('.')[-1]}.*--restart"):
        trainer.resume()
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in before.items())
    assert trainer.state == TrainState() and trainer.rank_state == RankState()


def test_train_state_round_trips_and_tracks_the_best_value():
    state = TrainState(epoch=2, step_in_epoch=1, global_step=15, best_metric=0.5, bad_epochs=1,
                       history=[{"epoch": 1, "val_loss": 0.5}], timing=[{"epoch": 1, "wall_s": 1.0}],
                       epoch_elapsed=3.5, stopped_early=False)
    assert TrainState.from_dict(state.to_dict()) == state
    assert state.to_dict()["history"] is not TrainState.from_dict(state.to_dict()).history
    assert [state.record_monitor(v, "min") for v in (0.6, 0.4)] == [False, True]
    assert (state.best_metric, state.bad_epochs) == (0.4, 0)
    assert [state.record_monitor(v, "max") for v in (0.3, 0.7)] == [False, True] and state.bad_epochs == 0
    sums = RankState()
    sums.add({"loss": torch.tensor(1.5), "l1": 0.25})
    sums.add({"loss": torch.tensor(0.5), "l1": 0.75})
    assert sums == RankState({"loss": 2.0, "l1": 1.0}, 2)
    entry = sums.to_dict(torch.device("cpu"))
    assert set(entry) == set(OLD_RANK_KEYS) and RankState.from_dict(entry) == sums


class Unindexed(Dataset):
    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {k: v for k, v in self.data[i].items() if k != "index"}


@pytest.mark.parametrize("which", ["train_set", "val_set"])
def test_a_dataset_without_index_is_refused_with_the_fix(tmp_path, which):
    task = ToyTask()
    setattr(task, which, Unindexed(getattr(task, which)))
    with pytest.raises(TaskContractError, match=r"Unindexed has no 'index' key.*'index': i"):
        fit(tmp_path, task)


def test_a_task_without_a_member_of_the_contract_is_refused(tmp_path):
    declared = set(inspect.get_annotations(Task)) | {n for n, v in vars(Task).items()
                                                      if inspect.isfunction(v) and not n.startswith("_")}
    assert set(TASK_MEMBERS) == declared  # the checked list is the Protocol's
    task = ToyTask()
    del task.fingerprint
    with pytest.raises(TaskContractError, match="ToyTask lacks.*fingerprint"):
        Trainer(task, SETTINGS, tmp_path, torch.device("cpu"), progress=False)


def test_run_settings_of_a_stage_config_are_its_train_scheduler_and_loader_sections():
    from ctpipe.config import build_config, to_dict
    from ctpipe.stages.fbp_window import FBPWindowConfig

    cfg = build_config(FBPWindowConfig, {}, ["data.batch_size=3", "data.num_workers=2", "scheduler.name=cosine"])
    settings = RunSettings.of(cfg)
    assert (settings.train, settings.scheduler, settings.batch_size, settings.num_workers) == (
        cfg.train, cfg.scheduler, 3, 2)
    assert settings.record == to_dict(cfg)
