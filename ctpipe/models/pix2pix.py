"""pix2pix U-Net generator (Isola et al. 2017), rebuilt from the reference's architecture description.

Architecture (``num_downs`` = 8 is the reference's ``unet_256``, 9 is ``unet_512``):

* encoder: ``num_downs`` blocks of Conv2d(4, stride 2, pad 1); channels ngf, 2ngf, 4ngf, 8ngf, 8ngf, ...
  Every block but the outermost starts with LeakyReLU(0.2); every block but the outermost and the
  innermost ends with a norm layer.
* decoder: mirrored ConvTranspose2d(4, stride 2, pad 1) blocks that take the concatenation of the skip
  connection and the deeper block's output; ReLU before, norm after (Tanh at the outermost block).
* dropout(0.5) after the decoder convolution of the ``num_downs - 5`` inner 8ngf blocks (not the
  innermost), as in the reference (3 blocks for unet_256).
* conv biases only where no affine norm follows (the reference's ``use_bias = norm is instance``);
  the two outermost convolutions always have a bias.

The input side length must be divisible by ``2 ** num_downs`` (256 for unet_256, 512 for unet_512).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

NORMS = ("batch", "instance")


@dataclasses.dataclass(frozen=True)
class UNetGeneratorConfig:
    """:class:`UNetGenerator` hyper-parameters. Defaults are the reference pix2pix ``unet_256`` for 1-channel CT."""

    num_downs: int = 8
    in_channels: int = 1
    out_channels: int = 1
    ngf: int = 64
    norm: str = "batch"  # "batch" (reference default for pix2pix) | "instance"
    dropout: bool = True  # reference: dropout on unless --no_dropout

    def __post_init__(self) -> None:
        if self.num_downs < 5:
            raise ValueError(f"UNetGeneratorConfig.num_downs={self.num_downs}: the pix2pix U-Net needs at least 5 "
                             "down-sampling blocks (8 = unet_256, 9 = unet_512)")
        if self.norm not in NORMS:
            raise ValueError(f"UNetGeneratorConfig.norm={self.norm!r}: choose one of {NORMS}")
        if min(self.in_channels, self.out_channels, self.ngf) < 1:
            raise ValueError(f"UNetGeneratorConfig channels must be >= 1, got {self}")

    @property
    def min_side(self) -> int:
        """Input sides must be multiples of this (the bottleneck is 1x1 at this size)."""
        return 2 ** self.num_downs


GENERATORS: dict[str, UNetGeneratorConfig] = {
    "unet_256": UNetGeneratorConfig(num_downs=8),
    "unet_512": UNetGeneratorConfig(num_downs=9),
}


def make_norm(norm: str, channels: int) -> nn.Module:
    """The reference's two norm layers: affine BatchNorm with running stats, or plain InstanceNorm."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm={norm!r}: choose one of {NORMS}")


def init_weights_normal(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix init: conv/linear weights ~ N(0, std), biases 0; BatchNorm weight ~ N(1, std), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class _SkipBlock(nn.Module):
    """One U-Net level: down path, the deeper level, up path.

    A non-outermost block returns ``cat(a, up(deeper(down(a))))`` with ``a = LeakyReLU(x)``: the skip
    carries the activated encoder features, as in the paper (encoder blocks are Conv-Norm-LeakyReLU) and
    as the reference ends up doing through its in-place LeakyReLU. Here it is explicit and out of place.
    """

    def __init__(self, outer: int, inner: int, *, in_channels: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, norm: str = "batch", dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        in_channels = outer if in_channels is None else in_channels
        bias = norm == "instance"
        down_conv = nn.Conv2d(in_channels, inner, kernel_size=4, stride=2, padding=1, bias=bias)
        self.act: nn.Module = nn.Identity() if outermost else nn.LeakyReLU(0.2)
        layers: list[nn.Module]
        if outermost:
            up_conv = nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1)
            layers = [down_conv, _required(submodule), nn.ReLU(True), up_conv, nn.Tanh()]
        elif innermost:
            up_conv = nn.ConvTranspose2d(inner, outer, kernel_size=4, stride=2, padding=1, bias=bias)
            layers = [down_conv, nn.ReLU(True), up_conv, make_norm(norm, outer)]
        else:
            up_conv = nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1, bias=bias)
            layers = [down_conv, make_norm(norm, inner), _required(submodule),
                      nn.ReLU(True), up_conv, make_norm(norm, outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        a = self.act(x)
        return torch.cat([a, self.model(a)], dim=1)


def _required(submodule: nn.Module | None) -> nn.Module:
    if submodule is None:
        raise ValueError("a non-innermost U-Net block needs its deeper submodule")
    return submodule


class UNetGenerator(nn.Module):
    """pix2pix U-Net: (B, in_channels, H, W) in [-1, 1] -> (B, out_channels, H, W) in (-1, 1) (Tanh)."""

    def __init__(self, config: UNetGeneratorConfig = UNetGeneratorConfig()) -> None:
        super().__init__()
        self.config = config
        c, ngf = config, config.ngf
        block = _SkipBlock(ngf * 8, ngf * 8, innermost=True, norm=c.norm)
        for _ in range(c.num_downs - 5):
            block = _SkipBlock(ngf * 8, ngf * 8, submodule=block, norm=c.norm, dropout=c.dropout)
        block = _SkipBlock(ngf * 4, ngf * 8, submodule=block, norm=c.norm)
        block = _SkipBlock(ngf * 2, ngf * 4, submodule=block, norm=c.norm)
        block = _SkipBlock(ngf, ngf * 2, submodule=block, norm=c.norm)
        self.model = _SkipBlock(c.out_channels, ngf, in_channels=c.in_channels, submodule=block,
                                outermost=True, norm=c.norm)
        init_weights_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.config.min_side
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"UNetGenerator(num_downs={self.config.num_downs}) expects (B, "
                             f"{self.config.in_channels}, H, W) with H and W multiples of {side}; got "
                             f"{tuple(x.shape)}. Resize/pad the slices or pick a smaller num_downs.")
        return self.model(x)


def build_generator(name: str, **overrides: Any) -> UNetGenerator:
    """``GENERATORS[name]`` with field overrides, e.g. ``build_generator("unet_256", norm="instance")``."""
    if name not in GENERATORS:
        raise KeyError(f"unknown pix2pix generator {name!r}; choose one of {sorted(GENERATORS)}")
    return UNetGenerator(dataclasses.replace(GENERATORS[name], **overrides))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
