"""``report.html``: one self-contained page per aggregate output folder (figures inlined as base64 PNG).

Sections: the summary table (each metric's data range in its header, the margin of every trained model over
the best baseline of its run and split), training curves from each run's ``history.csv`` (loss terms,
validation metrics, learning rate), per-split PSNR/SSIM distributions (box plots with every sample drawn,
axes not cut at an arbitrary floor) and example slices shown in a display window suited to the anatomy.
Reads only what :mod:`ctpipe.report` already gathered plus the files runs leave behind.
"""

from __future__ import annotations

import base64
import html
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ctpipe.atomic import atomic_write_bytes, atomic_write_text, pyplot
from ctpipe.intensity import hu_to_unit_interval

REPORT_NAME = "report.html"
DISTRIBUTIONS_PNG = "distributions.png"
_RANGE = re.compile(r"^(?P<name>[^\[]+)\[range=(?P<range>[^\]]+)\]$")


@dataclass(frozen=True)
class DisplayWindow:
    """Grey levels of the example slices: ``low..high`` in the stored values, described for the reader."""

    label: str
    low: float | None = None   # None: the target slice's own min / max
    high: float | None = None


def _hu_to_xray_unit(hu: float) -> float:  # the X-ray -> CT targets' units (XRAY2CT_HU_WINDOW onto [0, 1])
    return float(hu_to_unit_interval(np.float64(hu)))


# Per stage (explicit; unknown stages fall back to the target's own range). The phase data are HU slices of
# a beating heart: soft tissue (W 400 / L 40) separates blood pool, myocardium and fat.
DISPLAY_WINDOWS: dict[str, DisplayWindow] = {
    "pix2pix_phase": DisplayWindow("soft tissue, W 400 / L 40 HU (-160..240 HU)", -160.0, 240.0),
    "stage1_64": DisplayWindow("soft tissue, W 400 / L 40 HU", _hu_to_xray_unit(-160.0), _hu_to_xray_unit(240.0)),
    "refine_256": DisplayWindow("soft tissue, W 400 / L 40 HU", _hu_to_xray_unit(-160.0), _hu_to_xray_unit(240.0)),
    "direct_256": DisplayWindow("soft tissue, W 400 / L 40 HU", _hu_to_xray_unit(-160.0), _hu_to_xray_unit(240.0)),
    "fbp_window": DisplayWindow("full range of each ground-truth slice (LoDoPaB attenuation, normalised)"),
    "fbp_unet": DisplayWindow("full range of each ground-truth slice (LoDoPaB attenuation, normalised)"),
}
FALLBACK_WINDOW = DisplayWindow("full range of each target slice")


# ---- figures ---------------------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _short(run: str) -> str:
    path = Path(run)
    return f"{path.parent.name}/{path.name}"


def metric_header(column: str) -> str:
    """``psnr[range=1]`` -> ``psnr<br><small>data range 1</small>``; columns without a range say so."""
    match = _RANGE.match(column)
    if match:
        return f"{html.escape(match['name'])}<br><small>data range {html.escape(match['range'])}</small>"
    if column.endswith("_std"):
        return f"{metric_header(column[:-4])}<br><small>std over samples</small>"
    return f"{html.escape(column)}<br><small>no data range (absolute error)</small>"


def _is_score(column: str) -> bool:
    return column.startswith(("psnr", "ssim")) and not column.endswith("_std")


def margins(summary: pd.DataFrame) -> pd.DataFrame:
    """For every trained-model row: its PSNR/SSIM minus the best baseline of the same run and split."""
    scores = [c for c in summary.columns if _is_score(c)]
    rows = []
    for _, row in summary[summary.experiment != "baseline"].iterrows():
        peers = summary[(summary.run == row.run) & (summary.split == row.split) & (summary.experiment == "baseline")]
        if peers.empty:
            continue
        out = {"run": row.run, "model": row.model, "split": row.split}
        for col in scores:
            best = peers.loc[peers[col].idxmax()] if peers[col].notna().any() else None
            if best is not None:
                out[col] = float(row[col] - best[col])
                out[f"{col} baseline"] = str(best.model)
        rows.append(out)
    return pd.DataFrame(rows)


def _cell(value: object) -> str:
    """A number to 4 significant digits; text (e.g. the name of the best baseline) as it is; NaN empty."""
    if isinstance(value, str):
        return value
    return f"{value:.4g}" if pd.notna(value) else ""


def summary_html(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "<p>No evaluated runs.</p>"
    ids = ["run", "stage", "experiment", "model", "split", "n_samples"]
    metrics = [c for c in summary.columns if c not in ids and c not in ("epochs", "wall_time_s")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ids) + "".join(f"<th>{metric_header(c)}</th>"
                                                                      for c in metrics)
    head += "<th>epochs</th><th>wall time (s)</th>"
    body = []
    for _, row in summary.iterrows():
        cls = ' class="baseline"' if row.experiment == "baseline" else ""
        cells = [_short(row.run), row.stage, row.experiment, row.model, row.split, int(row.n_samples)]
        values = [_cell(row[c]) for c in metrics]
        tail = [int(row.epochs), f"{row.wall_time_s:.1f}"]
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [*cells, *values, *tail])
                    + "</tr>")
    table = (f'<div class="wide"><table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
             '</table></div>')
    return table + margins_html(margins(summary))


def margins_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>No baseline was scored beside the trained models.</p>"
    scores = [c for c in frame.columns if _is_score(c) and not c.endswith(" baseline")]
    head = "<th>run</th><th>model</th><th>split</th>" + "".join(
        f"<th>margin in {metric_header(c)}</th>" for c in scores)
    body = []
    for _, row in frame.iterrows():
        cells = [f"<td>{html.escape(_short(row.run))}</td><td>{html.escape(row.model)}</td>"
                 f"<td>{html.escape(row.split)}</td>"]
        for col in scores:
            value = row.get(col)
            if pd.isna(value):
                cells.append("<td></td>")
                continue
            sign = "better" if value > 0 else "worse" if value < 0 else "equal"
            cells.append(f'<td class="{sign}">{value:+.4g} vs {html.escape(str(row[f"{col} baseline"]))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return ('<h3>Margin over the best baseline (same run and split; positive = the trained model is better)</h3>'
            f'<table id="margins"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def history_figure(history: pd.DataFrame, title: str) -> bytes | None:
    """Panels over epochs: loss terms (train and validation), validation PSNR, SSIM and other metrics, lr."""
    if history.empty or "epoch" not in history:
        return None
    plt = pyplot()
    losses = [c for c in history.columns if c.startswith("train_") or c.startswith("val_loss")]
    psnrs = [c for c in history.columns if c.startswith("val_psnr")]
    ssims = [c for c in history.columns if c.startswith("val_ssim")]
    others = [c for c in history.columns if c.startswith("val_") and c not in (*losses, *psnrs, *ssims)]
    rates = [c for c in history.columns if c == "lr" or c.startswith("lr_")]
    panels = [(p, cols) for p, cols in (("loss terms", losses), ("validation PSNR (dB)", psnrs),
                                        ("validation SSIM", ssims), ("other validation metrics", others),
                                        ("learning rate", rates)) if cols]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.2), squeeze=False)
    for ax, (name, cols) in zip(axes[0], panels):
        for col in cols:
            ax.plot(history["epoch"], history[col], marker="o", markersize=3, label=col)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        if name == "loss terms" and (history[cols] > 0).all().all():
            ax.set_yscale("log")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def distribution_figure(per_sample: pd.DataFrame) -> bytes | None:
    """Per split and PSNR/SSIM column: a box per (run, model) with every sample drawn on top."""
    if per_sample.empty:
        return None
    scores = [c for c in per_sample.columns if _is_score(c) and pd.api.types.is_numeric_dtype(per_sample[c])]
    splits = [s for s in ("validation", "test") if s in set(per_sample.split)] or sorted(set(per_sample.split))
    if not scores:
        return None
    plt = pyplot()
    groups = list(dict.fromkeys(zip(per_sample.run, per_sample.model)))
    one_run = len({run for run, _ in groups}) == 1
    fig, axes = plt.subplots(len(splits), len(scores), figsize=(max(4.2, 1.1 * len(groups) + 1.8) * len(scores),
                                                                 3.4 * len(splits)), squeeze=False)
    rng = np.random.default_rng(0)
    for i, split in enumerate(splits):
        for j, col in enumerate(scores):
            ax = axes[i, j]
            data, labels = [], []
            for run, model in groups:
                values = per_sample[(per_sample.split == split) & (per_sample.run == run)
                                    & (per_sample.model == model)][col].dropna().to_numpy()
                if len(values):
                    data.append(values)
                    labels.append(model if one_run else f"{Path(run).name}\n{model}")
            if not data:
                ax.set_visible(False)
                continue
            ax.boxplot(data, showfliers=False)
            for k, values in enumerate(data, start=1):
                ax.scatter(k + rng.uniform(-0.15, 0.15, len(values)), values, s=8, alpha=0.6, color="black")
            ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
            ax.set_title(f"{col} - {split}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _middle_slice(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    while arr.ndim > 2:
        arr = arr[arr.shape[0] // 2]
    return arr


def examples_figure(npz: Path, stage: str, title: str, max_rows: int = 3) -> bytes | None:
    """Target and every model's prediction (middle slices) in the stage's display window."""
    if not npz.is_file():
        return None
    with np.load(npz) as handle:
        data = {k: handle[k] for k in handle.files}
    target = data.pop("target", None)
    if target is None or not len(target):
        return None
    window = DISPLAY_WINDOWS.get(stage, FALLBACK_WINDOW)
    names = ["target", *sorted(data)]
    n = min(len(target), max_rows)
    plt = pyplot()
    fig, axes = plt.subplots(n, len(names), figsize=(2.5 * len(names), 2.6 * n + 0.4), squeeze=False)
    for i in range(n):
        gt = _middle_slice(target[i])
        low = window.low if window.low is not None else float(gt.min())
        high = window.high if window.high is not None else float(gt.max())
        for j, name in enumerate(names):
            img = gt if name == "target" else _middle_slice(data[name][i])
            ax = axes[i, j]
            ax.imshow(img.T, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if name != "target":
                ax.set_xlabel(f"mean |error| {float(np.mean(np.abs(img - gt))):.3g}", fontsize=7)
    fig.suptitle(f"{title}\ndisplay window: {window.label}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


# ---- page ----------------------------------------------------------------------------------------------------------
_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}
th{background:#e8eef5;vertical-align:bottom}
td:nth-child(-n+5){text-align:left}
tr.baseline td{color:#555;background:#f7f7f7}
td.better{background:#dff3df}td.worse{background:#f7dede}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
h2{border-bottom:2px solid #e8eef5;padding-bottom:3px;margin-top:1.6em}
small{font-weight:normal;color:#555}
div.wide{overflow-x:auto}
"""


def _history_sections(runs: Sequence[Any]) -> list[str]:
    parts = []
    for run in runs:
        path = run.run_dir / "history.csv"
        if not path.is_file():
            continue
        png = history_figure(pd.read_csv(path), f"{run.stage} / {run.name}")
        if png:
            parts.append(f"<h3>{html.escape(run.stage)} / {html.escape(run.name)}</h3>{_img(png, f'curves {run.name}')}")
    return parts or ["<p>No history.csv in the runs.</p>"]


def _example_sections(runs: Sequence[Any]) -> list[str]:
    parts = []
    for run in runs:
        for split in ("validation", "test"):
            png = examples_figure(run.run_dir / "eval" / split / "examples.npz", run.stage,
                                  f"{run.stage} / {run.name} / {split}")
            if png:
                window = DISPLAY_WINDOWS.get(run.stage, FALLBACK_WINDOW)
                parts.append(f"<h3>{html.escape(run.stage)} / {html.escape(run.name)} / {split}</h3>"
                             f"<p>Middle slices; display window: {html.escape(window.label)}</p>"
                             + _img(png, f"examples {run.name} {split}"))
    return parts or ["<p>No examples.npz in the runs.</p>"]


def render_report(summary: pd.DataFrame, per_sample: pd.DataFrame, runs: Sequence[Any], title: str,
                  distributions: bytes | None) -> str:
    """The whole page as one string (no external resources)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    dist = _img(distributions, "PSNR/SSIM distributions") if distributions else "<p>No per-sample scores.</p>"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Written by <code>ctpipe aggregate</code> at {when} from {len(runs)} run(s). Means over samples; every "
        "metric column names its data range. Grey rows are baselines scored by the same code on the same "
        "samples.</p>",
        "<h2>Summary</h2>", summary_html(summary),
        "<h2>Training curves (history.csv)</h2>", *_history_sections(runs),
        "<h2>Per-split distributions</h2>", "<p>Box: median and quartiles; whiskers: 1.5 IQR; one dot per "
        "sample (slice or volume, as the stage evaluates).</p>", dist,
        "<h2>Example slices</h2>", *_example_sections(runs),
        "</body></html>",
    ])


def write_html_report(out_dir: Path, summary: pd.DataFrame, per_sample: pd.DataFrame,
                      runs: Sequence[Any]) -> dict[str, Path]:
    """Write ``out_dir/report.html`` (and ``distributions.png``, the same box plots as a file)."""
    out_dir = Path(out_dir)
    outputs = {}
    distributions = distribution_figure(per_sample)
    if distributions:
        outputs["distributions_png"] = atomic_write_bytes(out_dir / DISTRIBUTIONS_PNG, distributions)
    page = render_report(summary, per_sample, runs, f"ctpipe results: {out_dir.name}", distributions)
    outputs["report_html"] = out_dir / REPORT_NAME
    atomic_write_text(outputs["report_html"], page)
    return outputs
