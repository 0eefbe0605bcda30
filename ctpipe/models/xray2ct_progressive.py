"""XRay2CTProgressive: dual-view X-rays -> 256^3 CT through a progressive decoder, trained end to end.

The network of stage ``direct_256``.

The X-ray encoder and the hybrid 3D ViT are those of stage 1 (:class:`XRayEncoder`,
:class:`VolumeTransformer` from :mod:`ctpipe.models.xray2ct`, by composition; stage-1 weights can be
loaded with :meth:`XRay2CTProgressive.load_stage1_state_dict`). A progressive decoder upsamples the token
grid by stride-2 stages (g -> ... -> 64 -> 128 -> 256 at the default config) and emits sigmoid
outputs at the last three scales (``output_size / 4``, ``/ 2``, ``output_size``) for multi-scale
supervision. ``gradient_checkpointing=True`` checkpoints the transformer blocks *and* every decoder
stage (``torch.utils.checkpoint``, ``use_reentrant=False``); it overrides the backbone's own flag.

Input ``(B, n_views, xray_size, xray_size)`` (frontal, lateral); output a dict keyed by edge length,
each ``(B, 1, s, s, s)`` in (0, 1), RAS axis order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ctpipe.models.layout import guard_layout, refuse_foreign_keys
from ctpipe.models.residual_upsampler3d import apply
from ctpipe.models.xray2ct import XRAY2CT_TINY, UpBlock3D, VolumeTransformer, XRay2CTConfig, XRayEncoder


@dataclass(frozen=True)
class XRay2CTProgressiveConfig:
    backbone: XRay2CTConfig = XRay2CTConfig()
    output_size: int = 256
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)  # one per stride-2 stage from the token grid
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        grid = self.backbone.token_grid
        expected = grid * 2 ** len(self.decoder_channels)
        if expected != self.output_size:
            raise ValueError(
                f"XRay2CTProgressiveConfig: token grid {grid} x 2^len(decoder_channels)={expected} must equal "
                f"output_size={self.output_size}; use {int(math.log2(self.output_size / grid))} decoder stages"
            )
        if len(self.decoder_channels) < 3:
            raise ValueError("XRay2CTProgressiveConfig: need at least 3 decoder stages (three output scales)")

    @property
    def output_sizes(self) -> tuple[int, int, int]:
        return (self.output_size // 4, self.output_size // 2, self.output_size)


XRAY2CT_PROGRESSIVE_TINY = XRay2CTProgressiveConfig(backbone=XRAY2CT_TINY, output_size=32, decoder_channels=(8, 8, 4))


class XRay2CTProgressive(nn.Module):
    def __init__(self, config: XRay2CTProgressiveConfig = XRay2CTProgressiveConfig()) -> None:
        super().__init__()
        self.config = config
        backbone = dataclasses.replace(config.backbone, gradient_checkpointing=config.gradient_checkpointing)
        self.encoder = XRayEncoder(backbone)
        self.transformer = VolumeTransformer(backbone)
        widths = (backbone.embed_dim, *config.decoder_channels)
        self.stages = nn.ModuleList([UpBlock3D(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.heads = nn.ModuleList([nn.Conv3d(c, 1, 3, padding=1) for c in config.decoder_channels[-3:]])
        guard_layout(self)

    def forward(self, xray: Tensor) -> dict[int, Tensor]:
        ckpt = self.config.gradient_checkpointing and torch.is_grad_enabled()
        x = self.transformer(self.encoder(xray))
        first_head = len(self.stages) - 3
        outputs: dict[int, Tensor] = {}
        for index, stage in enumerate(self.stages):
            x = apply(stage, x, ckpt)
            if index >= first_head:
                outputs[x.shape[-1]] = torch.sigmoid(self.heads[index - first_head](x))
        return outputs

    def load_stage1_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy a stage-1 :class:`XRay2CT64` state dict's ``encoder.*`` and ``transformer.*`` weights.

        Raises if any of those weights is missing, unknown or has a different shape (configs must match).
        """
        wanted = {k: v for k, v in state_dict.items() if k.startswith(("encoder.", "transformer."))}
        refuse_foreign_keys(self, wanted, "")  # weights of an older layout: say so before "lacks" below
        own = {k for k in self.state_dict() if k.startswith(("encoder.", "transformer."))}
        missing = sorted(own - set(wanted))
        if missing:
            raise KeyError(f"XRay2CTProgressive.load_stage1_state_dict: stage-1 state dict lacks {missing[:5]}... "
                           f"({len(missing)} keys); "
                           "pass XRay2CT64.state_dict() of a model built with the same backbone config")
        self.load_state_dict(wanted, strict=False)
