"""Shared helpers of the benchmarks: interleaved timing, machine description, the CSV table."""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

from ctpipe.atomic import atomic_write_text

COLUMNS = ("benchmark", "implementation", "device", "batch", "ms_per_image", "samples_per_s", "psnr", "ssim",
           "ratio_vs_skimage", "ratio_vs_astra_cpu", "ratio_vs_grid_sample", "ratio_vs_consumer",
           "threads", "machine", "load_before", "load_after", "date")
DEFAULT_OUT = Path("results") / "benchmarks.csv"


def machine() -> str:
    """``cpu model, N cores`` (and the GPU when one is used)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def today() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def interleaved_median_seconds(calls: Mapping[str, Callable[[], object]], repeats: int,
                               sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median wall time of each call over ``repeats`` rounds after one warm-up round.

    Rounds are interleaved (every implementation once per round) so a load change on a shared
    machine hits all of them alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def write_rows(rows: Sequence[dict], out: Path, benchmarks: Sequence[str]) -> pd.DataFrame:
    """Replace the rows of ``benchmarks`` in the CSV at ``out`` by ``rows`` (atomic write)."""
    new = pd.DataFrame(list(rows), columns=list(COLUMNS))
    if out.exists():
        old = pd.read_csv(out)
        old = old[~old["benchmark"].isin(list(benchmarks))]
        new = pd.concat([old.reindex(columns=list(COLUMNS)), new], ignore_index=True)
    buffer = io.StringIO()
    new.to_csv(buffer, index=False, float_format="%.6g")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buffer.getvalue())
    return new


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    frame = pd.DataFrame(list(rows))
    shown = [c for c in columns if c in frame.columns and frame[c].notna().any()]
    print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
