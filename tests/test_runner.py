"""run_stage around the trainer: a stop signal during the final evaluation requeues instead of killing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Iterator

import torch

from ctpipe.checkpoint import LATEST, load_checkpoint
from ctpipe.runner import run_stage
from ctpipe.train import StopFlag

TINY = ["data.batch_size=4", "train.epochs=2", "train.early_stopping_patience=null", "data.num_workers=0",
        "train.device=cpu"]


class SignalAtEvaluation(StopFlag):
    """Sends the process a real SIGUSR2 as soon as the final evaluation's handler is installed (the one
    installed with ``interrupt``), i.e. after training has finished and while the evaluation runs."""

    @contextlib.contextmanager
    def installed(self, signals=(signal.SIGUSR2, signal.SIGTERM), interrupt=None) -> Iterator[StopFlag]:
        with super().installed(signals, interrupt) as flag:
            if interrupt is not None:
                os.kill(os.getpid(), signal.SIGUSR2)
            yield flag


def _events(run: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]


def test_signal_during_final_evaluation_reports_preempted_and_a_restart_evaluates(tiny_lodopab: Path,
                                                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    over = [f"data.root={tiny_lodopab}", *TINY]
    before = signal.getsignal(signal.SIGUSR2)
    first = run_stage("fbp_window", run, over, stop_flag=SignalAtEvaluation())
    assert signal.getsignal(signal.SIGUSR2) is before  # every handler restored
    assert first.status == "preempted" and first.epoch == 2
    assert not (run / "eval").exists() and "evaluated" not in _events(run)
    trained = load_checkpoint(run / "checkpoints" / LATEST)
    # the restarted job: no more training (same step, same weights), then the evaluation runs to the end
    second = run_stage("fbp_window", run, over)
    assert second.status == "completed"
    again = load_checkpoint(run / "checkpoints" / LATEST)
    assert again["global_step"] == trained["global_step"]
    assert again["models"].keys() == trained["models"].keys()
    for name, weights in trained["models"].items():
        for key, value in weights.items():
            assert torch.equal(value, again["models"][name][key]), f"{name}.{key}"
    assert _events(run)[-1] == "evaluated"
    assert (run / "eval" / "test").is_dir()
