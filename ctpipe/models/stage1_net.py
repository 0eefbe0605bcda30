"""The stage-1 X-ray -> CT network with optional multi-scale heads (what ``stage1_64`` trains)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctpipe.config import ConfigError
from ctpipe.models.lift_ct import LiftCT, LiftCTConfig
from ctpipe.models.xray2ct import XRay2CT64, XRay2CTConfig

Stage1Network = XRay2CTConfig | LiftCTConfig


class Stage1Net(nn.Module):
    """:class:`XRay2CT64` (as ``net``) plus ``n_aux`` sigmoid heads on the last decoder stages before the output.

    ``forward`` returns ``{edge: (B, 1, s, s, s)}`` for every supervised scale; the final output equals
    ``net(xray)`` exactly. The checkpoint keys of the backbone are ``net.*``."""

    def __init__(self, config: Stage1Network, n_aux: int = 0) -> None:
        super().__init__()
        if isinstance(config, LiftCTConfig):
            if n_aux:
                raise ConfigError("the lift network has one output scale; set loss.scale_weights to one entry, e.g. [1.0]")
            self.net: nn.Module = LiftCT(config)
            self.aux = nn.ModuleList()
            return
        stages = len(config.decoder_channels)
        if not 0 <= n_aux < stages:
            raise ConfigError(f"stage1_64: {n_aux} auxiliary heads requested, the decoder has {stages} stages "
                              f"(at most {stages - 1}); shorten loss.scale_weights")
        self.net = XRay2CT64(config)
        self.aux = nn.ModuleList([nn.Conv3d(c, 1, 1) for c in config.decoder_channels[stages - 1 - n_aux : stages - 1]])

    def forward(self, xray: Tensor) -> dict[int, Tensor]:
        size = self.net.config.volume_size
        if not len(self.aux):
            return {size: self.net(xray)}
        decoder = self.net.decoder
        x = self.net.features(xray)
        first = len(decoder.stages) - 1 - len(self.aux)
        outputs: dict[int, Tensor] = {}
        for index, stage in enumerate(decoder.stages):
            x = stage(x)
            if first <= index < len(decoder.stages) - 1:
                outputs[x.shape[-1]] = torch.sigmoid(self.aux[index - first](x))
        outputs[size] = torch.sigmoid(decoder.head(x))
        return outputs
