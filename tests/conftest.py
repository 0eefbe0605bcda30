"""Shared fixtures: tiny data sets written by the project's own writers, in the real file formats."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_GEOMETRY_ARGS = (32, 24)  # pixels, angles


@pytest.fixture(scope="session")
def tiny_lodopab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepped LoDoPaB-format shard set (48 slices, 32^2 px, 24 angles) shared by the tests of a session."""
    from ctpipe.data.lodopab import prep_lodopab
    from ctpipe.data.synthetic import write_synthetic_lodopab
    from ctpipe.ops.geometry import ParallelBeamGeometry

    root = tmp_path_factory.mktemp("tiny_lodopab")
    geometry = ParallelBeamGeometry.lodopab().scaled(*TINY_GEOMETRY_ARGS)
    write_synthetic_lodopab(root / "raw", n=48, size="small", seed=7, samples_per_file=16, geometry=geometry,
                            progress=False)
    prep_lodopab(root / "raw", root / "shards", progress=False)
    return root / "shards"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` need a CUDA device; without one they are skipped (``make gpu-check`` runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
