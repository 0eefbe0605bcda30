"""The FBP loop on an accelerator: kernel launches per FBP bounded by the geometry alone (not the batch), and
no index/coordinate tensors rebuilt or copied from the host inside the loop. Counted with torch.profiler on
the CPU: every aten op recorded here is one kernel launch (or more) on CUDA."""

from __future__ import annotations

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ctpipe.ops import ParallelBeamGeometry, fbp
from ctpipe.ops import projector

GEOMETRY = ParallelBeamGeometry.lodopab().scaled(64, 120)
COPIES = ("aten::to", "aten::_to_copy", "aten::copy_", "aten::lift_fresh", "aten::tensor", "aten::scalar_tensor")


def _ops(batch: int, method: str) -> list[str]:
    sinogram = torch.rand(batch, 1, *GEOMETRY.sinogram_shape)
    with torch.no_grad():
        fbp(sinogram, GEOMETRY, method=method)  # warm: the per-geometry cache is built here
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fbp(sinogram, GEOMETRY, method=method)
    return [event.name for event in prof.events()]


@pytest.mark.parametrize("method", ["grid_sample", "gather"])
def test_fbp_launches_do_not_grow_with_the_batch(method):
    small, large = _ops(1, method), _ops(64, method)
    # equal up to a one-off layout copy that a batch of one does not need
    assert len(small) <= len(large) <= len(small) + 6, (len(small), len(large))
    chunks = math.ceil(GEOMETRY.n_angles / projector._chunk_size(GEOMETRY)) if method == "grid_sample" else 1
    assert len(large) <= 300 + 12 * chunks, len(large)


def test_grid_sample_loop_copies_nothing_from_the_host(monkeypatch):
    """Copies/conversions happen once per FBP (the ramp filter), never once per chunk of angles."""
    few = [n for n in _ops(8, "grid_sample") if n in COPIES]
    monkeypatch.setattr(projector, "CHUNK_BUDGET_ELEMENTS", GEOMETRY.n_pixels**2 * 7)  # 18 chunks, not 4
    assert math.ceil(GEOMETRY.n_angles / projector._chunk_size(GEOMETRY)) == 18
    many = [n for n in _ops(8, "grid_sample") if n in COPIES]
    assert len(many) == len(few), (len(few), len(many))
    assert projector._grid_coordinates.cache_info().hits > 0
