"""Trainer options: gradient accumulation, bf16 autocast, clipping, schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.schedules import linear_decay_factor
from ctpipe.train import RunSettings, Trainer
from tests.toy_task import ToyTask

BASE = dict(epochs=2, seed=1, early_stopping_patience=None, log_every=1000, checkpoint_interval_s=1e9)


def fit(tmp_path, name, batch_size, sched=SchedulerConfig(name="none"), **train):
    task = ToyTask(n_train=36, dropout=0.0)
    cfg = TrainConfig(**{**BASE, **train})
    Trainer(task, RunSettings(cfg, sched, batch_size), tmp_path / name, torch.device("cpu"), progress=False).fit()
    return task


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    big = fit(tmp_path, "big", batch_size=6)
    small = fit(tmp_path, "acc", batch_size=3, grad_accum=2)
    for (name, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    plain = fit(tmp_path, "plain", batch_size=3)
    assert not torch.allclose(plain.model[0].weight, small.model[0].weight)


def test_bf16_autocast_trains_and_differs_from_fp32(tmp_path):
    fp32 = fit(tmp_path, "fp32", batch_size=6)
    bf16 = fit(tmp_path, "bf16", batch_size=6, amp="bf16")
    w32, w16 = fp32.model[0].weight, bf16.model[0].weight
    assert torch.isfinite(w16).all()
    assert not torch.equal(w32, w16)  # autocast really ran in bf16
    assert (w32 - w16).abs().max() < 0.05  # ...and trained the same model


def test_clipping_bounds_the_update(tmp_path):
    start = ToyTask(n_train=36, dropout=0.0).model[0].weight.detach().clone()
    clipped = fit(tmp_path, "clip", batch_size=36, epochs=1, grad_clip=1e-4)
    free = fit(tmp_path, "free", batch_size=36, epochs=1)
    # Adam normalises step sizes, so compare with SGD-free reasoning: clipping must change the trajectory
    assert not torch.equal(clipped.model[0].weight, free.model[0].weight)
    assert torch.isfinite(clipped.model[0].weight).all() and not torch.equal(clipped.model[0].weight, start)


def test_cosine_and_linear_decay_schedules_in_history(tmp_path):
    fit(tmp_path, "cos", batch_size=6, epochs=4, sched=SchedulerConfig(name="cosine"))
    import pandas as pd

    lrs = pd.read_csv(tmp_path / "cos" / "history.csv")["lr"].tolist()
    expected = [1e-2 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    factors = [linear_decay_factor(e, 2, 5) for e in range(5)]
    assert factors == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


def test_onecycle_steps_per_optimizer_step(tmp_path):
    fit(tmp_path, "oc", batch_size=6, epochs=2, sched=SchedulerConfig(name="onecycle"))
    import pandas as pd

    lrs = pd.read_csv(tmp_path / "oc" / "history.csv")["lr"].tolist()
    assert lrs[0] > lrs[1]  # epoch 1 ends past the warm-up peak, on the way down
    assert lrs[-1] < 1e-6   # the cycle ends at max_lr / (div_factor * final_div_factor), not climbing again
