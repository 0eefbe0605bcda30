"""ResidualUpsampler3D: a stage-1 64^3 volume -> refined 64^3 / 128^3 / 256^3 volumes by residual learning.

The network of stage ``refine_256`` (over a frozen stage-1 model).

For every output scale ``s`` in (64, 128, 256) the network predicts a *residual* that is added to the
trilinear upsampling of the input to ``s^3``::

    out[s] = trilinear(x, s) + head_s(features_s)

Features are extracted at 64^3 by squeeze-excitation residual blocks, then upsampled 64 -> 128 -> 256
by sub-pixel convolution (Conv3d to 8x channels + :class:`PixelShuffle3D`), with SE blocks at each
scale. The heads are **zero-initialised**, so before training ``out[s]`` is exactly the trilinear
baseline (bit-for-bit), and training starts from the baseline rather than from noise.

Outputs are not clamped (a clamp would stop gradients outside [0, 1]); clamp to [0, 1] before
computing metrics. Input ``(B, 1, n, n, n)`` with ``n = config.input_size``; output a dict keyed by
edge length: ``{n: ..., 2n: ..., 4n: ...}``, each ``(B, 1, s, s, s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ctpipe.models.layout import guard_layout
from ctpipe.models.pixel_shuffle3d import PixelShuffle3D
from ctpipe.models.xray2ct import group_norm


@dataclass(frozen=True)
class ResidualUpsampler3DConfig:
    input_size: int = 64
    channels: tuple[int, int, int] = (32, 16, 8)  # feature widths at 1x, 2x, 4x the input size
    blocks: tuple[int, int, int] = (3, 2, 1)      # SE residual blocks per scale
    se_reduction: int = 4
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or len(self.blocks) != 3:
            raise ValueError("ResidualUpsampler3DConfig: channels and blocks need one entry per scale (1x, 2x, 4x)")
        if self.input_size < 1 or min(self.channels) < 1 or min(self.blocks) < 0:
            raise ValueError(f"ResidualUpsampler3DConfig: sizes must be positive, got {self}")

    @property
    def output_sizes(self) -> tuple[int, int, int]:
        return (self.input_size, 2 * self.input_size, 4 * self.input_size)


RESIDUAL_UPSAMPLER3D_TINY = ResidualUpsampler3DConfig(input_size=8, channels=(8, 8, 4), blocks=(1, 1, 1),
                                                      se_reduction=2)


class SqueezeExcitation3D(nn.Module):
    """Channel attention: x * sigmoid(MLP(global average of x))."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        weights = self.fc(x.mean(dim=(2, 3, 4)))
        return x * weights[:, :, None, None, None]


class SEResBlock3D(nn.Module):
    """x + SE(conv-norm-act-conv-norm(x)); the convs have no bias (the norm after each removes it)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
            group_norm(channels),
            nn.SiLU(),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
            group_norm(channels),
            SqueezeExcitation3D(channels, reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SubPixelUp3D(nn.Module):
    """2x upsampling: Conv3d to 8*out channels, PixelShuffle3D(2), SiLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)
        self.shuffle = PixelShuffle3D(2)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shuffle(self.conv(x)))


def zero_head(channels: int) -> nn.Conv3d:
    """A 3^3 conv to one channel whose weights and bias start at exactly zero."""
    head = nn.Conv3d(channels, 1, 3, padding=1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def apply(module: nn.Module, x: Tensor, use_checkpoint: bool) -> Tensor:
    """``module(x)``, through ``torch.utils.checkpoint`` (non-reentrant) when asked."""
    return checkpoint(module, x, use_reentrant=False) if use_checkpoint else module(x)


def run_stages(stages: nn.ModuleList, x: Tensor, use_checkpoint: bool) -> Tensor:
    for stage in stages:
        x = apply(stage, x, use_checkpoint)
    return x


class ResidualUpsampler3D(nn.Module):
    def __init__(self, config: ResidualUpsampler3DConfig = ResidualUpsampler3DConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2, c4 = config.channels
        b1, b2, b4 = config.blocks
        r = config.se_reduction
        self.stem = nn.Sequential(nn.Conv3d(1, c1, 3, padding=1), nn.SiLU())
        self.blocks1 = nn.ModuleList([SEResBlock3D(c1, r) for _ in range(b1)])
        self.up2 = SubPixelUp3D(c1, c2)
        self.blocks2 = nn.ModuleList([SEResBlock3D(c2, r) for _ in range(b2)])
        self.up4 = SubPixelUp3D(c2, c4)
        self.blocks4 = nn.ModuleList([SEResBlock3D(c4, r) for _ in range(b4)])
        self.heads = nn.ModuleList([zero_head(c1), zero_head(c2), zero_head(c4)])
        guard_layout(self)

    def forward(self, volume: Tensor) -> dict[int, Tensor]:
        n = self.config.input_size
        if volume.dim() != 5 or tuple(volume.shape[1:]) != (1, n, n, n):
            raise ValueError(f"ResidualUpsampler3D: expected input of shape (B, 1, {n}, {n}, {n}), "
                             f"got {tuple(volume.shape)}")
        ckpt = self.config.gradient_checkpointing and torch.is_grad_enabled()
        f1 = run_stages(self.blocks1, self.stem(volume), ckpt)
        f2 = run_stages(self.blocks2, apply(self.up2, f1, ckpt), ckpt)
        f4 = run_stages(self.blocks4, apply(self.up4, f2, ckpt), ckpt)
        outputs: dict[int, Tensor] = {}
        for size, features, head in zip(self.config.output_sizes, (f1, f2, f4), self.heads):
            outputs[size] = trilinear_baseline(volume, size) + head(features)
        return outputs


def trilinear_baseline(volume: Tensor, size: int) -> Tensor:
    """The input resampled to ``size^3`` (trilinear, ``align_corners=False``; identity at the input size)."""
    if volume.shape[-1] == size:
        return volume
    return F.interpolate(volume, size=(size, size, size), mode="trilinear", align_corners=False)
