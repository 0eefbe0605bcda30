"""What every stage declares, and the evaluation writer shared by stages."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ctpipe.atomic import atomic_path, atomic_write_frame, atomic_write_json
from ctpipe.distributed import DistEnv
from ctpipe.progress import track


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    config_cls: type
    build_task: Callable[[Any, DistEnv, torch.device], Any]
    # (config, task, run_dir, device, env) -> None; writes eval/<split>/<model>.csv (+ examples) on rank 0
    final_evaluation: Callable[[Any, Any, Path, torch.device, DistEnv], None]
    # the eval model this stage trains; every other model in its eval/ is a reference scored alongside it
    trained_model: str


Predictor = Callable[[Mapping[str, Any]], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@torch.no_grad()
def evaluate_predictors(
    predictors: Mapping[str, Predictor],
    dataset: Dataset,
    target_key: str,
    metric_fn: MetricFn,
    out_dir: Path,
    device: torch.device,
    batch_size: int = 8,
    n_examples: int = 4,
    extra_columns: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Run every predictor over ``dataset``; write ``<out_dir>/<model>.csv`` (per sample) and ``examples.npz``.

    All predictors see the same samples in the same order and are scored by the same ``metric_fn``.
    """
    from ctpipe.train import collate

    out_dir.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in predictors}
    examples: dict[str, list[np.ndarray]] = {"target": [], **{name: [] for name in predictors}}
    for batch in track(loader, f"final evaluation ({out_dir.name})", "batches"):
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        target = batch[target_key]
        take = max(n_examples - len(examples["target"]), 0)
        examples["target"] += [t[0].cpu().numpy() for t in target[:take]]
        for name, predict in predictors.items():
            pred = predict(batch).float()
            values = metric_fn(pred, target)
            examples[name] += [p[0].cpu().numpy() for p in pred[:take]]
            for i in range(target.shape[0]):
                rows[name].append({"sample_id": batch["sample_id"][i], "patient_id": batch["patient_id"][i],
                                   **{k: float(v[i]) for k, v in values.items()}, **(extra_columns or {})})
    frames = write_eval_tables(rows, out_dir)
    write_examples(examples, out_dir)
    return frames


def write_examples(examples: Mapping[str, list[np.ndarray]], out_dir: Path) -> Path:
    """``<out_dir>/examples.npz`` (one stacked array per non-empty key: target and each model), atomically."""
    path = out_dir / "examples.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{k: np.stack(v) for k, v in examples.items() if v})
    return path


EVAL_COUNTS = "n_samples.json"


def write_eval_tables(rows: Mapping[str, list[dict[str, Any]]], out_dir: Path) -> dict[str, pd.DataFrame]:
    """Write ``<out_dir>/<model>.csv`` (per-sample rows, ``model`` first) atomically; returns the frames.

    ``<out_dir>/n_samples.json`` (``{model: rows}``, written first) records how many samples each model
    scored, so ``ctpipe aggregate`` can tell a complete table from a truncated or stale one.
    """
    atomic_write_json(out_dir / EVAL_COUNTS, {name: len(model_rows) for name, model_rows in rows.items()})
    frames = {}
    for name, model_rows in rows.items():
        frame = pd.DataFrame(model_rows)
        frame.insert(0, "model", name)
        atomic_write_frame(frame, out_dir / f"{name}.csv")
        frames[name] = frame
    return frames
