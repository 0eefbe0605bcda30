"""Data, runs and results roots: environment variables with defaults relative to the working folder."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


def data_root() -> Path:
    """Where datasets and shard sets live (``CTPIPE_DATA``, default ``./data``)."""
    return Path(os.environ.get("CTPIPE_DATA", "data"))


def runs_root() -> Path:
    """Where run folders ``<stage>/<name>/`` live (``CTPIPE_RUNS``, default ``./runs``)."""
    return Path(os.environ.get("CTPIPE_RUNS", "runs"))


def results_root() -> Path:
    """Where aggregated CSV/PNG reports go (``CTPIPE_RESULTS``, default ``./results``)."""
    return Path(os.environ.get("CTPIPE_RESULTS", "results"))


def stage_configs_dir() -> Path:
    """The packaged stage configurations ``ctpipe/configs/<config>.json`` (package data of ctpipe)."""
    return PACKAGE_ROOT / "configs"
