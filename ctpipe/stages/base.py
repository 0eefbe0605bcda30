"""The shape every stage has, and the one evaluation every run ends with.

A :class:`Stage` declares its config class, how to build the trainer's task and its trained model, how to
load that model from a checkpoint for inference, and the models its final evaluation scores
(:attr:`Stage.predictors`: the trained model and the baselines beside it). :func:`evaluate_run` does the
rest for every stage: rank guard, ``best.pt``, the validation/test loop and the CSV/npz/PNG files.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ctpipe.atomic import atomic_path, atomic_write_frame, atomic_write_json
from ctpipe.checkpoint import BEST, load_checkpoint
from ctpipe.distributed import DistEnv
from ctpipe.progress import track
from ctpipe.run_files import BASELINE, EVAL_COUNTS, ROLE_COLUMN, TRAINED
from ctpipe.task import Task
from ctpipe.train import collate, to_device

log = logging.getLogger(__name__)

C = TypeVar("C")  # the stage's config dataclass
T = TypeVar("T", bound=Task)  # the stage's trainer task: meets the ctpipe.task.Task contract

Predictor = Callable[[Mapping[str, Any]], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclasses.dataclass
class SplitScores:
    """One split's evaluation: per-model rows, example arrays (``target`` + models) and, per model, the first
    sample's ``(prediction, target, sample id)`` for a figure."""

    rows: dict[str, list[dict[str, Any]]]
    examples: dict[str, list[np.ndarray]]
    first: dict[str, tuple[np.ndarray, np.ndarray, str]] = dataclasses.field(default_factory=dict)


# (config, task, predictors, dataset, device, label) -> SplitScores: replaces the per-sample loop
SplitScorer = Callable[[Any, Any, Mapping[str, Predictor], Dataset, torch.device, str], SplitScores]
# (config, prediction, target, png path, title) -> path: one figure per model of its first sample
FigureFn = Callable[[Any, np.ndarray, np.ndarray, Path, str], Path]


def _no_columns(cfg: Any, task: Any) -> Mapping[str, Mapping[str, Any]]:
    return {}


@dataclasses.dataclass(frozen=True)
class Evaluation(Generic[C, T]):
    """What the final evaluation needs besides the predictors.

    Per-sample scoring: ``target(cfg, task, model)``, the batch key of a model's target; ``metric(cfg)``, the
    per-sample metric columns; ``columns``, constant columns added to a model's rows; ``figure``, writes
    ``<model>_slices.png``. ``score_split`` replaces the per-sample loop (pix2pix scores whole volumes)."""

    target: Callable[[C, T, str], str] | None = None
    metric: Callable[[C], MetricFn] | None = None
    columns: Callable[[C, T], Mapping[str, Mapping[str, Any]]] = _no_columns
    figure: FigureFn | None = None
    n_examples: int = 4
    score_split: SplitScorer | None = None

    def __post_init__(self) -> None:
        if self.score_split is None and (self.target is None or self.metric is None):
            raise ValueError("Evaluation: give target and metric (per-sample scoring) or score_split")


@dataclasses.dataclass(frozen=True)
class Stage(Generic[C, T]):
    """One training stage. Stage names are used everywhere: configs, sbatch scripts, run folders, CSVs.

    ``build_model(cfg, shape)``: the trained module(s), ``shape`` holding what the config alone does not fix
    (the grid recorded as :attr:`ctpipe.checkpoint.RunCheckpoint.inference`, a geometry, ...);
    ``load_trained(checkpoint, device)``: a ready-to-run trained model for inference; ``predictors(cfg, task,
    device)``: ``{eval model: batch -> prediction}``, ``trained_model`` being the one this stage trains."""

    name: str
    config_cls: type[C]
    build_task: Callable[[C, DistEnv, torch.device], T]
    build_model: Callable[[C, Mapping[str, Any]], Any]
    load_trained: Callable[..., Any]
    predictors: Callable[[C, T, torch.device], Mapping[str, Predictor]]
    trained_model: str
    evaluation: Evaluation[C, T]

    def role(self, model: str) -> str:
        return TRAINED if model == self.trained_model else BASELINE

    def final_evaluation(self, cfg: C, task: T, run_dir: Path, device: torch.device, env: DistEnv) -> None:
        """What the runner calls once training is done: :func:`evaluate_run` for this stage."""
        evaluate_run(self, cfg, task, run_dir, device, env)


# ---- the final evaluation ---------------------------------------------------------------------------------
def load_best(task: Any, run_dir: Path, device: torch.device) -> None:
    """Load ``checkpoints/best.pt`` (when it exists) into the task's modules; all of them to ``device``, eval."""
    best = run_dir / "checkpoints" / BEST
    if best.exists():
        models = load_checkpoint(best)["models"]
        for name, module in task.modules.items():
            module.load_state_dict(models[name])
    for module in task.modules.values():
        module.to(device).eval()


def evaluation_splits(task: Any) -> list[tuple[str, Dataset]]:
    """``[(split, dataset)]`` for the non-empty validation / test splits of a task; warns when either is empty
    (a figure measured on validation only was also used to choose ``best.pt``)."""
    found = [("validation", task.val_set), ("test", task.test_set)]
    present = [(name, data) for name, data in found if data is not None and len(data) > 0]
    missing = [name for name, data in found if data is None or len(data) == 0]
    if missing:
        log.warning("final evaluation: the %s split(s) are empty, so no held-out figure is written for them; "
                    "prep the shard set with a non-empty validation and test split", " and ".join(missing))
    return present


def evaluate_run(stage: Stage[C, T], cfg: C, task: T, run_dir: Path, device: torch.device, env: DistEnv) -> None:
    """Score the best checkpoint and the stage's baselines on validation and test (rank 0 only).

    Writes ``eval/<split>/<model>.csv`` (one row per sample, with its ``role``), ``n_samples.json``,
    ``examples.npz`` and, when the stage has a figure, ``<model>_slices.png``."""
    if not env.is_main:
        return
    load_best(task, run_dir, device)
    predictors = stage.predictors(cfg, task, device)
    evaluation = stage.evaluation
    roles = {name: stage.role(name) for name in predictors}
    for split, dataset in evaluation_splits(task):
        out_dir = run_dir / "eval" / split
        if evaluation.score_split is not None:
            scores = evaluation.score_split(cfg, task, predictors, dataset, device, split)
        else:
            assert evaluation.target is not None and evaluation.metric is not None  # checked at construction
            targets = {name: evaluation.target(cfg, task, name) for name in predictors}
            batch_size = cfg.data.eval_batch_size  # type: ignore[attr-defined]
            scores = score_samples(predictors, targets, evaluation.metric(cfg), dataset, device, batch_size,
                                   evaluation.n_examples, split, evaluation.columns(cfg, task))
        write_split(scores, out_dir, roles)
        if evaluation.figure is not None:
            for name, (pred, target, sample) in scores.first.items():
                evaluation.figure(cfg, pred, target, out_dir / f"{name}_slices.png", f"{name} / {sample}")


@torch.no_grad()
def score_samples(predictors: Mapping[str, Predictor], targets: Mapping[str, str], metric: MetricFn,
                  dataset: Dataset, device: torch.device, batch_size: int = 8, n_examples: int = 4,
                  label: str = "", columns: Mapping[str, Mapping[str, Any]] | None = None) -> SplitScores:
    """Run every predictor over ``dataset`` and score it against its target with the same ``metric``.

    All predictors see the same samples in the same order. Examples hold the first ``n_examples`` samples
    of the models scored on the largest target (channel 0)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    scores = SplitScores({name: [] for name in predictors}, {"target": []})
    example_key = ""
    for batch in track(loader, f"final evaluation ({label})", "batches"):
        batch = to_device(batch, device)
        if not example_key:
            example_key = max(targets.values(), key=lambda key: batch[key][0].numel())
            scores.examples.update({n: [] for n in predictors if targets[n] == example_key})
        take = max(n_examples - len(scores.examples["target"]), 0)
        scores.examples["target"] += [t[0].cpu().numpy() for t in batch[example_key][:take]]
        for name, predict in predictors.items():
            pred, target = predict(batch).float(), batch[targets[name]]
            values = metric(pred, target)
            if name in scores.examples:
                scores.examples[name] += [p[0].cpu().numpy() for p in pred[:take]]
            if name not in scores.first:
                scores.first[name] = (pred[0, 0].cpu().numpy(), target[0, 0].cpu().numpy(), batch["sample_id"][0])
            extra = (columns or {}).get(name, {})
            for i in range(target.shape[0]):
                scores.rows[name].append({"sample_id": batch["sample_id"][i], "patient_id": batch["patient_id"][i],
                                          **{k: float(v[i]) for k, v in values.items()}, **extra})
    return scores


# ---- the files ---------------------------------------------------------------------------------------------
def write_split(scores: SplitScores, out_dir: Path, roles: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """``<out_dir>/<model>.csv`` + ``n_samples.json`` and ``examples.npz`` of one split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = write_eval_tables(scores.rows, out_dir, roles)
    write_examples(scores.examples, out_dir)
    return frames


def write_examples(examples: Mapping[str, list[np.ndarray]], out_dir: Path) -> Path:
    """``<out_dir>/examples.npz`` (one stacked array per non-empty key: target and each model), atomically."""
    path = out_dir / "examples.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{k: np.stack(v) for k, v in examples.items() if v})
    return path


def write_eval_tables(rows: Mapping[str, list[dict[str, Any]]], out_dir: Path,
                      roles: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """Write ``<out_dir>/<model>.csv`` (per-sample rows; ``model`` and its ``role`` first) atomically.

    ``<out_dir>/n_samples.json`` (``{model: rows}``, written first) records how many samples each model
    scored, so ``ctpipe aggregate`` can tell a complete table from a truncated or stale one.
    """
    atomic_write_json(out_dir / EVAL_COUNTS, {name: len(model_rows) for name, model_rows in rows.items()})
    frames = {}
    for name, model_rows in rows.items():
        frame = pd.DataFrame(model_rows)
        frame.insert(0, ROLE_COLUMN, roles[name])
        frame.insert(0, "model", name)
        atomic_write_frame(frame, out_dir / f"{name}.csv")
        frames[name] = frame
    return frames


class OncePerBatch:
    """``fn(batch)`` computed once per batch object: predictors of one batch share work (an FBP image, a
    stage-1 forward pass, the nearest training patient)."""

    def __init__(self, fn: Callable[[Mapping[str, Any]], Any]) -> None:
        self.fn = fn
        self._batch: Mapping[str, Any] | None = None
        self._value: Any = None

    def __call__(self, batch: Mapping[str, Any]) -> Any:
        if self._batch is not batch or self._value is None:
            self._batch, self._value = batch, self.fn(batch)
        return self._value


def freeze(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``module`` on ``device``, in eval mode, without gradients (a trained model for inference)."""
    module.requires_grad_(False)
    return module.to(device).eval()
