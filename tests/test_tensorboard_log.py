"""Optional TensorBoard logging: events readable by TensorBoard itself; a clear error without the package."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ctpipe.config import ConfigError, TrainConfig, build_config
from ctpipe.tensorboard_log import open_tensorboard


def test_scalars_and_images_round_trip_through_tensorboards_reader(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = open_tensorboard(True, tmp_path)
    assert log is not None and open_tensorboard(True, tmp_path / "other", is_main=False) is None
    for step in (10, 20):
        log.step(step, {"loss": 1.0 / step, "lr": 0.01, "bad": float("nan")})
    log.epoch(1, {"epoch": 1, "train_loss": 0.5, "val_psnr[range=1]": 31.5, "note": "text"})
    log.images(1, {"target": np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)})
    log.epoch(2, {"epoch": 2, "train_loss": 0.25})  # flushes: readable without close() (a preempted job)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {"train/loss", "train/lr", "epoch/train_loss", "epoch/val_psnr[range=1]"}
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == [(10, 0.1), (20, 0.05)]
    assert events.Scalars("epoch/val_psnr[range=1]")[0].value == pytest.approx(31.5)
    image = events.Images("validation/target")[0]
    assert (image.step, image.width, image.height) == (1, 8, 8)
    assert [e.step for e in events.Scalars("epoch/train_loss")] == [1, 2]
    log.close()


def test_missing_package_fails_at_start_up_with_the_install_command(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match=r"pip install 'ctpipe\[tensorboard\]'"):
        open_tensorboard(True, tmp_path)
    assert open_tensorboard(False, tmp_path) is None and not (tmp_path / "tb").exists()


def test_train_config_has_the_switch() -> None:
    assert build_config(TrainConfig, {}, ["tensorboard=true"]).tensorboard is True
    assert TrainConfig().tensorboard is False


def test_the_trainer_logs_steps_and_epochs_when_switched_on(tmp_path: Path) -> None:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ctpipe.config import SchedulerConfig
    from ctpipe.train import RunSettings, Trainer
    from tests.toy_task import ToyTask

    cfg = TrainConfig(epochs=2, log_every=3, tensorboard=True, early_stopping_patience=None)
    Trainer(ToyTask(), RunSettings(cfg, SchedulerConfig(name="none"), batch_size=6), tmp_path, torch.device("cpu"),
            progress=False).fit()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]  # with each logged step line (every 3rd in an epoch)
    assert len(steps) == 4 and steps == sorted(set(steps)) and steps[-1] <= 14  # 7 steps per epoch
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [1, 2]
    off = tmp_path / "off"
    Trainer(ToyTask(), RunSettings(TrainConfig(epochs=1), SchedulerConfig(name="none"), batch_size=6), off,
            torch.device("cpu"), progress=False).fit()
    assert not (off / "tb").exists()


def test_example_images_do_not_change_the_training(tmp_path: Path) -> None:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ctpipe.config import SchedulerConfig
    from ctpipe.train import RunSettings, Trainer
    from tests.toy_task import ToyTask

    class Pictured(ToyTask):
        def example_images(self, batch):
            return {"prediction": self.model(batch["x"])[0].reshape(1, 1).expand(4, 4)}

    cfg = TrainConfig(epochs=2, tensorboard=True, early_stopping_patience=None)
    tasks = {"plain": ToyTask(), "pictured": Pictured()}
    for name, task in tasks.items():
        Trainer(task, RunSettings(cfg, SchedulerConfig(name="none"), batch_size=6), tmp_path / name,
                torch.device("cpu"), progress=False).fit()
    for key, value in tasks["plain"].model.state_dict().items():
        assert torch.equal(value, tasks["pictured"].model.state_dict()[key]), key
    events = EventAccumulator(str(tmp_path / "pictured" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [i.step for i in events.Images("validation/prediction")] == [1, 2]
