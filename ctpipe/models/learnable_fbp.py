"""Learnable filtered backprojection: ramp x window (learnable or fixed) -> adjoint backprojection -> post-processing.

``LearnableFBP(geometry, window, postprocess)`` computes
``postprocess(fbp_backprojection_scale * backproject(ramp_filter(sino, window(freqs))))``: with
``FixedWindow("hann", 0.641)`` and no post-processing it is exactly :func:`ctpipe.ops.fbp` (the
published LoDoPaB FBP baseline). Gradients reach the window through the exact adjoint pair of
:mod:`ctpipe.ops.projector`. The geometry is a plain attribute (a frozen dataclass, picklable); the
state dict holds only the window's parameters and the post-processor's.
"""

from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn

from ctpipe.ops.filters import LODOPAB_HANN_SCALING, FixedWindow, filter_frequencies
from ctpipe.ops.geometry import ParallelBeamGeometry
from ctpipe.ops.projector import filtered_backprojection

__all__ = ["LearnableFBP"]


class LearnableFBP(nn.Module):
    """FBP with a window module (maps normalised frequencies in [0, 1] to a response) and a post-processor.

    Input: sinogram ``(B, 1, n_angles, n_detector)``; output: image ``(B, 1, n_pixels, n_pixels)``.
    """

    def __init__(
        self,
        geometry: ParallelBeamGeometry,
        window: nn.Module,
        postprocess: nn.Module | None = None,
        padding: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(geometry, ParallelBeamGeometry):
            raise TypeError(f"LearnableFBP: geometry must be a ParallelBeamGeometry, got {type(geometry).__name__}")
        if not isinstance(window, nn.Module):
            raise TypeError(
                f"LearnableFBP: window must be an nn.Module (e.g. ctpipe.ops.WindowII() or FixedWindow('hann')), "
                f"got {type(window).__name__}"
            )
        self.geometry = geometry
        self.padding = bool(padding)
        self.window = window
        self.postprocess = postprocess if postprocess is not None else nn.Identity()

    @classmethod
    def hann_baseline(cls, geometry: ParallelBeamGeometry, padding: bool = True) -> "LearnableFBP":
        """The fixed LoDoPaB reference FBP (Hann window, :data:`LODOPAB_HANN_SCALING`), no parameters: the one
        builder of that baseline."""
        return cls(geometry, FixedWindow("hann", LODOPAB_HANN_SCALING), padding=padding)

    def window_response(self, like: Tensor) -> Tensor:
        """The window at the filter's rfft frequencies, in ``like``'s dtype and device."""
        freqs = filter_frequencies(self.geometry.n_detector, self.padding, dtype=like.dtype, device=like.device)
        return self.window(freqs).to(like.dtype)

    def reconstruct(self, sinogram: Tensor) -> Tensor:
        """The FBP part only (no post-processing)."""
        return filtered_backprojection(sinogram, self.geometry, self.window_response(sinogram), self.padding)

    def forward(self, sinogram: Tensor) -> Tensor:
        return self.postprocess(self.reconstruct(sinogram))

    # ---- parameter groups ----------------------------------------------------------------------
    def fbp_parameters(self) -> Iterator[nn.Parameter]:
        return self.window.parameters()

    def postprocess_parameters(self) -> Iterator[nn.Parameter]:
        return self.postprocess.parameters()

    def freeze_fbp(self) -> None:
        """Stop training the window (``requires_grad=False``); the FBP then builds no autograd graph."""
        for parameter in self.fbp_parameters():
            parameter.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"geometry={self.geometry!r}, padding={self.padding}"
