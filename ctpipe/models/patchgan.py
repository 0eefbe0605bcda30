"""pix2pix PatchGAN discriminator (conditional): scores overlapping patches of (condition, image) pairs.

With ``n_layers`` = 3 (the reference's ``basic`` D) each output logit sees a 70x70 input patch and a
256^2 input gives a 30x30 logit map. Layout: Conv(4, s2)+LeakyReLU(0.2), then ``n_layers - 1`` blocks
of Conv(4, s2)+Norm+LeakyReLU with channels ndf*min(2^n, 8), one Conv(4, s1)+Norm+LeakyReLU, and a
final Conv(4, s1) to one channel of raw logits (no sigmoid: the GAN loss takes logits).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ctpipe.models.pix2pix import NORMS, init_weights_normal, make_norm


@dataclasses.dataclass(frozen=True)
class PatchGANConfig:
    """Defaults: the reference 70x70 PatchGAN for a 1-channel CT condition + 1-channel CT image."""

    in_channels: int = 2  # condition channels + image channels (concatenated)
    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"PatchGANConfig.n_layers={self.n_layers}: needs at least 1 (3 = 70x70 PatchGAN)")
        if self.norm not in NORMS:
            raise ValueError(f"PatchGANConfig.norm={self.norm!r}: choose one of {NORMS}")
        if min(self.in_channels, self.ndf) < 1:
            raise ValueError(f"PatchGANConfig channels must be >= 1, got {self}")


def receptive_field(n_layers: int) -> int:
    """Input patch side seen by one output logit (70 for n_layers = 3), from the kernel/stride stack."""
    strides = [2] * n_layers + [1, 1]
    field = 1
    for stride in reversed(strides):
        field = (field - 1) * stride + 4
    return field


class PatchGANDiscriminator(nn.Module):
    """``forward(condition, image)`` -> (B, 1, h, w) patch logits; the two are concatenated on channels."""

    def __init__(self, config: PatchGANConfig = PatchGANConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        bias = c.norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, c.ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, c.n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < c.n_layers else 1
            layers += [nn.Conv2d(c.ndf * prev, c.ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       make_norm(c.norm, c.ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(c.ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights_normal(self)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if condition.shape[0] != image.shape[0] or condition.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"PatchGANDiscriminator: condition {tuple(condition.shape)} and image "
                             f"{tuple(image.shape)} must share batch size and spatial size")
        x = torch.cat([condition, image], dim=1)
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"PatchGANDiscriminator expects {self.config.in_channels} channels in total "
                             f"(condition + image), got {condition.shape[1]} + {image.shape[1]}; set "
                             "PatchGANConfig.in_channels accordingly")
        return self.model(x)
