"""A tiny regression task for trainer tests (in-memory data; dropout exercises the RNG state)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from ctpipe.config import OptimConfig
from ctpipe.schedules import build_optimizer


class ToyData(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=gen)
        w = torch.randn(8, 1, generator=torch.Generator().manual_seed(99))
        self.y = self.x @ w + 0.1 * torch.randn(n, 1, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "index": i, "sample_id": f"s{i}", "patient_id": f"p{i // 3}"}


class ToyTask:
    def __init__(self, seed: int = 0, n_train: int = 40, n_val: int = 12, lr: float = 1e-2,
                 nan_at_step: int | None = None, on_step: Any = None, dropout: float = 0.2) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))
        self.modules = {"model": self.model}
        self.optimizers = {"model": build_optimizer(self.model.parameters(), OptimConfig(lr=lr))}
        self.train_set, self.val_set = ToyData(n_train, 1), ToyData(n_val, 2)
        self.fingerprint = {"model": "mlp16", "lr": lr}
        self.nan_at_step, self.on_step, self.steps = nan_at_step, on_step, 0

    def train_step(self, batch: Mapping[str, Any], stepper: Any) -> dict[str, torch.Tensor]:
        self.steps += 1
        with stepper.autocast():
            loss = nn.functional.mse_loss(stepper.module("model")(batch["x"]), batch["y"])
        if self.nan_at_step is not None and self.steps == self.nan_at_step:
            loss = loss * float("nan")
        stepper.backward(loss, "model")
        if self.on_step is not None:
            self.on_step(self.steps)
        return {"loss": loss.detach()}

    def eval_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        err = (self.model(batch["x"]) - batch["y"]) ** 2
        return {"loss": err.flatten(1).mean(1), "mae": err.sqrt().flatten(1).mean(1)}
