"""Tomography operators: geometry, ramp filters/windows, forward projection, backprojection, FBP."""

from ctpipe.ops.filters import WINDOWS, FixedWindow, WindowII, filter_frequencies, ramp_filter, ramp_response, window_values
from ctpipe.ops.geometry import ParallelBeamGeometry
from ctpipe.ops.projector import backproject, fbp, filtered_backprojection, forward_project

__all__ = [
    "WINDOWS",
    "FixedWindow",
    "ParallelBeamGeometry",
    "WindowII",
    "backproject",
    "fbp",
    "filter_frequencies",
    "filtered_backprojection",
    "forward_project",
    "ramp_filter",
    "ramp_response",
    "window_values",
]
