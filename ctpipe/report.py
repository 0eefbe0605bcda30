"""Aggregation: run folders -> tidy CSV tables and PNG figures. Reads only the files runs leave behind."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctpipe.atomic import atomic_write_frame, atomic_write_png, pyplot
from ctpipe.errors import UserError
from ctpipe.report_html import write_html_report
from ctpipe.run_files import BASELINE, EVAL_COUNTS, ROLE_COLUMN, TRAINED

# Reference methods the stages score beside their trained models (experiment column = "baseline"). Every
# evaluation row records its role when written; these names (and LEGACY_TRAINED_MODELS) only classify the
# rows of eval tables written before the role column existed: see :func:`row_experiment`.
BASELINES: dict[str, str] = {
    "fbp_hann": "FBP, Hann window, frequency scaling 0.641 (published LoDoPaB baseline)",
    "identity": "input volume used as the prediction",
    "stage1_64_trilinear": "stage-1 64^3 prediction trilinearly upsampled to the high-resolution grid (option 1)",
    "mean_volume": "X-ray -> CT: the training split's mean volume, whatever the X-rays (mean_volume_<size> on another grid)",
    "nearest_xray": "X-ray -> CT: the training volume whose X-rays are nearest in L2 (nearest_xray_<size> on another grid)",
}
XRAY_TRIVIAL_BASELINES = ("mean_volume", "nearest_xray")
# Eval tables without a ``role`` column: the model each stage trained (every other model is a baseline).
LEGACY_TRAINED_MODELS: dict[str, str] = {
    "fbp_window": "learned_window",
    "fbp_unet": "fbp_unet",
    "stage1_64": "stage1_64",
    "refine_256": "refine_256",
    "direct_256": "direct_256",
    "pix2pix_phase": "pix2pix",
}
MARGIN_METRIC = "psnr[range=1]"


# The data family of each stage: a runs folder may hold several families, whose metric columns differ (PSNR on
# [0, 1] images, on HU volumes, ...); each family gets its own table and chart.
STAGE_FAMILY: dict[str, str] = {
    "fbp_window": "lodopab",
    "fbp_unet": "lodopab",
    "stage1_64": "xray2ct",
    "refine_256": "xray2ct",
    "direct_256": "xray2ct",
    "pix2pix_phase": "phases",
}


def stage_family(stage: str) -> str:
    """The family of ``stage`` (the stage name itself for a stage this version does not know)."""
    return STAGE_FAMILY.get(stage, stage)


@dataclass(frozen=True)
class RunFiles:
    run_dir: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def stage(self) -> str:
        return str(self.config.get("stage", self.run_dir.parent.name))


def find_runs(root: str | Path) -> list[RunFiles]:
    """Every folder under ``root`` holding a ``config.json`` and an ``eval/`` folder."""
    root = Path(root)
    runs = []
    for cfg_path in sorted(root.rglob("config.json")):
        if (cfg_path.parent / "eval").is_dir():
            runs.append(RunFiles(cfg_path.parent, json.loads(cfg_path.read_text())))
    return runs


def _run_facts(run: RunFiles) -> dict[str, Any]:
    history = run.run_dir / "history.csv"
    timing = run.run_dir / "timing.csv"
    epochs = len(pd.read_csv(history)) if history.exists() else 0
    wall = float(pd.read_csv(timing)["wall_s"].sum()) if timing.exists() else float("nan")
    return {"epochs": epochs, "wall_time_s": round(wall, 2)}


def row_role(run: RunFiles, model: str, frame: pd.DataFrame) -> str:
    """The ``role`` the table records; for tables written before that column, the stage's trained model from
    :data:`LEGACY_TRAINED_MODELS` (a stage this version does not know: the :data:`BASELINES` names)."""
    if ROLE_COLUMN in frame and len(frame):
        return str(frame[ROLE_COLUMN].iloc[0])
    trained = LEGACY_TRAINED_MODELS.get(run.stage)
    reference = model != trained if trained is not None else model in BASELINES
    return BASELINE if reference else TRAINED


def row_experiment(run: RunFiles, model: str, frame: pd.DataFrame) -> str:
    """The run's experiment for the model its stage trains, "baseline" for everything scored beside it."""
    return "baseline" if row_role(run, model, frame) == BASELINE else str(run.config.get("experiment", run.stage))


class EvalTableError(UserError):
    """Per-sample tables that do not hold the number of samples their run scored."""


def _scored_counts(folder: Path) -> dict[str, int] | None:
    """``{model: samples scored}`` recorded beside the tables of one eval folder (None for older runs)."""
    try:
        data = json.loads((folder / EVAL_COUNTS).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else None


def check_eval_table(csv_path: Path, frame: pd.DataFrame) -> str | None:
    """Why ``csv_path`` disagrees with the count its run recorded (None when it agrees or none was recorded)."""
    counts = _scored_counts(csv_path.parent)
    if counts is None:
        return None
    expected = counts.get(csv_path.stem)
    if expected is None:
        return f"{csv_path}: not written by this evaluation (its {EVAL_COUNTS} lists {sorted(counts)})"
    if len(frame) != expected:
        return f"{csv_path}: {len(frame)} rows, but the run scored {expected} samples"
    return None


def _read_eval_table(csv_path: Path) -> pd.DataFrame | str:
    try:
        frame = pd.read_csv(csv_path)
    except (OSError, ValueError) as error:  # empty or garbled
        return f"{csv_path}: unreadable ({error})"
    return check_eval_table(csv_path, frame) or frame


def per_sample_table(runs: list[RunFiles]) -> pd.DataFrame:
    frames, problems = [], []
    for run in runs:
        for csv_path in sorted((run.run_dir / "eval").glob("*/*.csv")):
            frame = _read_eval_table(csv_path)
            if isinstance(frame, str):
                problems.append(frame)
                continue
            split = csv_path.parent.name
            model = str(frame["model"].iloc[0]) if len(frame) else csv_path.stem
            experiment = row_experiment(run, model, frame)
            frame.insert(0, "split", split)
            frame.insert(0, "experiment", experiment)
            frame.insert(0, "stage", run.stage)
            frame.insert(0, "run", str(run.run_dir))
            frames.append(frame)
    if problems:
        raise EvalTableError(f"{len(problems)} evaluation table(s) do not hold what their run scored: "
                             + "; ".join(problems) + ". Nothing was aggregated. Run `ctpipe train` on those run "
                             "folders again (a finished run only re-evaluates), or move them out of --runs")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def metric_columns(frame: pd.DataFrame) -> list[str]:
    ids = {"run", "stage", "experiment", "split", "model", ROLE_COLUMN, "sample_id", "patient_id"}
    return [c for c in frame.columns if c not in ids and pd.api.types.is_numeric_dtype(frame[c])]


def summary_table(per_sample: pd.DataFrame, runs: list[RunFiles]) -> pd.DataFrame:
    """One row per run, model and split: means (and PSNR standard deviations) of the per-sample metrics."""
    if per_sample.empty:
        return pd.DataFrame()
    keys = ["run", "stage", "experiment", "model", "split"]
    metrics = metric_columns(per_sample)
    grouped = per_sample.groupby(keys, sort=False)
    summary = grouped[metrics].mean().reset_index()
    for col in [c for c in metrics if c.startswith("psnr")]:
        summary[f"{col}_std"] = grouped[col].std(ddof=0).values
    summary.insert(len(keys), "n_samples", grouped.size().values)
    facts = {str(r.run_dir): _run_facts(r) for r in runs}
    summary["epochs"] = [facts[r]["epochs"] if e != "baseline" else 0 for r, e in zip(summary.run, summary.experiment)]
    summary["wall_time_s"] = [facts[r]["wall_time_s"] if e != "baseline" else 0.0
                              for r, e in zip(summary.run, summary.experiment)]
    return summary


def add_baseline_margin(summary: pd.DataFrame, metric: str = MARGIN_METRIC) -> pd.DataFrame:
    """X-ray -> CT rows (those with ``eval_size``) get ``best_baseline`` (the better of mean_volume and
    nearest_xray in the same run, split and grid) and ``margin_over_best_baseline[<metric>]`` (the row's
    ``metric`` minus that baseline's); other rows get NaN / empty."""
    out = summary.copy()
    margin_col = f"margin_over_best_baseline[{metric}]"
    out["best_baseline"], out[margin_col] = "", float("nan")
    if out.empty or "eval_size" not in out or metric not in out:
        return out
    trivial = out.model.astype(str).str.replace(r"_\d+$", "", regex=True).isin(XRAY_TRIVIAL_BASELINES)
    trivial &= out.experiment == "baseline"
    for _, group in out[out.eval_size.notna()].groupby(["run", "split", "eval_size"], sort=False):
        candidates = group[trivial.loc[group.index]]
        if candidates.empty:
            continue
        best = candidates.loc[candidates[metric].idxmax()]
        out.loc[group.index, "best_baseline"] = str(best.model)
        out.loc[group.index, margin_col] = group[metric] - float(best[metric])
    return out


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_frame(frame, path, float_format="%.6g")


def plot_examples(run: RunFiles, split: str, out_png: Path) -> Path | None:
    """A grid of example slices: target and every model's prediction, with per-image PSNR."""
    plt = pyplot()

    npz = run.run_dir / "eval" / split / "examples.npz"
    if not npz.exists():
        return None
    data = dict(np.load(npz))
    target = data.pop("target")
    names = ["target", *sorted(data)]
    n = target.shape[0]
    fig, axes = plt.subplots(n, len(names), figsize=(2.6 * len(names), 2.6 * n), squeeze=False)
    for i in range(n):
        gt = _middle_slice(target[i])
        vmin, vmax = float(gt.min()), float(gt.max())
        for j, name in enumerate(names):
            img = gt if name == "target" else _middle_slice(data[name][i])
            ax = axes[i, j]
            ax.imshow(img.T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if name != "target":
                mse = float(np.mean((img - gt) ** 2))
                rng = vmax - vmin
                ax.set_xlabel(f"PSNR {10 * np.log10(rng ** 2 / max(mse, 1e-20)):.2f} dB (range=per_image)", fontsize=7)
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(f"{run.stage} / {run.name} / {split}", fontsize=10)
    return atomic_write_png(fig, out_png, 110)


def _middle_slice(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    while arr.ndim > 2:
        arr = arr[arr.shape[0] // 2]
    return arr


def plot_summary(summary: pd.DataFrame, out_png: Path, column: str) -> Path | None:
    plt = pyplot()

    if summary.empty or column not in summary:
        return None
    summary = summary[np.isfinite(pd.to_numeric(summary[column], errors="coerce"))]  # NaN/inf bars: no limits
    if summary.empty:
        return None
    rows = summary[summary.split == "test"] if (summary.split == "test").any() else summary
    labels = [f"{Path(r).name}\n{m}" for r, m in zip(rows.run, rows.model)]
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(rows)), 3.5))
    ax.bar(range(len(rows)), rows[column])
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    low = float(np.nanmin(rows[column])) if len(rows) else 0.0
    ax.set_ylim(low - 2, None)
    ax.set_ylabel(column)
    ax.set_title(f"{column} on the {rows.split.iloc[0]} split")
    return atomic_write_png(fig, out_png, 110)


def family_tables(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``summary`` split by data family, each without the metric columns that family never fills."""
    if summary.empty:
        return {}
    families = summary.stage.map(stage_family)
    tables = {}
    for family in sorted(families.unique()):
        table = summary[families == family]
        tables[family] = table.dropna(axis=1, how="all").reset_index(drop=True)
    return tables


def aggregate(runs_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.csv``, ``per_sample.csv`` and PNGs for every evaluated run under ``runs_dir``."""
    runs = find_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no evaluated runs under {runs_dir} (looked for */config.json with an eval/ folder); "
                                "train a stage first, e.g. `ctpipe train fbp_window --run-dir runs/fbp_window/a`")
    out_dir = Path(out_dir)
    per_sample = per_sample_table(runs)
    summary = add_baseline_margin(summary_table(per_sample, runs))
    outputs = {"summary": out_dir / "summary.csv", "per_sample": out_dir / "per_sample.csv"}
    _write_frame(summary, outputs["summary"])
    _write_frame(per_sample, outputs["per_sample"])
    families = family_tables(summary)
    for family, table in families.items():
        name = "" if len(families) == 1 else f"_{family}"
        if name:
            outputs[f"summary_{family}"] = out_dir / f"summary{name}.csv"
            _write_frame(table, outputs[f"summary_{family}"])
        psnr_cols = [c for c in table.columns if c.startswith("psnr") and not c.endswith("_std")]
        chart = plot_summary(table, out_dir / f"psnr{name}.png", psnr_cols[-1]) if psnr_cols else None
        if chart:
            outputs[f"psnr_png{name}"] = chart
    for run in runs:
        for split in ("test", "validation"):
            png = plot_examples(run, split, out_dir / f"{run.stage}-{run.name}-{split}.png")
            if png:
                outputs[f"examples_{run.stage}_{run.name}_{split}"] = png
    outputs.update(write_html_report(out_dir, summary, per_sample, runs))  # report.html (+ distributions.png)
    return outputs
