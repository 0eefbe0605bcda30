"""PostProcessingUNet: the 2D UNet that cleans up an FBP image (stage ``fbp_unet``), shaped like the published
LoDoPaB baseline.

The LoDoPaB FBP+UNet baseline is dival's ``UNet`` (``dival/reconstructors/networks/unet.py``,
used by ``FBPUNetReconstructor``; reference hyper-parameters: scales=5, skip_channels=4,
channels=(32, 32, 64, 64, 128, 128)[:scales], no sigmoid, biases initialised to zero, Adam lr
1e-3 with cosine decay to 1e-4, batch 32, 250 epochs). Its layout, followed here:

* in-block: 3x3 conv -> norm -> LeakyReLU(0.2) at full resolution (``channels[0]``);
* each down-block: 3x3 conv with stride 2 -> norm -> LReLU -> 3x3 conv -> norm -> LReLU;
* each up-block: bilinear x2 upsampling (align_corners=True) of the coarser features,
  concatenated with a 1x1-conv "thin" skip (``skip_channels`` channels, norm, LReLU) of the
  encoder features at that scale, then norm -> 3x3 conv -> norm -> LReLU -> 3x3 conv -> norm -> LReLU;
* out-block: 1x1 conv.

Differences from dival, by choice: ``residual=True`` (default) returns ``x + net(x)`` (set
``residual=False`` for dival's plain output); any input size works because the input is padded
(replicate) to a multiple of ``2 ** (scales - 1)`` and the output cropped back (dival crops
inside the network instead); the norm is configurable (batch as in dival, instance, group, none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NORMS", "PostProcessingUNet", "PostProcessingUNetConfig"]

NORMS = ("batch", "instance", "group", "none")
_SLOPE = 0.2


@dataclass(frozen=True)
class PostProcessingUNetConfig:
    """Channels per scale (finest first; ``len(channels)`` = number of scales) and options.

    ``skip_channels``: width of the 1x1-conv skip at each of the ``len(channels) - 1`` finer
    scales (one int for all, or a tuple finest first); 0 drops that skip connection.
    ``zero_init_output``: zero the last 1x1 conv, so a residual net starts as the identity.
    """

    in_channels: int = 1
    out_channels: int = 1
    channels: tuple[int, ...] = (32, 32, 64, 64, 128)
    skip_channels: int | tuple[int, ...] = 4
    norm: str = "batch"
    residual: bool = True
    zero_init_output: bool = False

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        skips = self.skip_channels
        if isinstance(skips, (list, tuple)):
            if len(skips) != len(self.channels) - 1:
                raise ValueError(
                    f"skip_channels has {len(skips)} entries; need one per up-block, "
                    f"len(channels) - 1 = {len(self.channels) - 1} (or a single int)"
                )
            object.__setattr__(self, "skip_channels", tuple(int(s) for s in skips))
        if any(s < 0 for s in self.skips):
            raise ValueError(f"skip_channels must be >= 0, got {self.skip_channels!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} must be one of {NORMS}")
        if self.residual and self.in_channels != self.out_channels:
            raise ValueError(
                f"residual=True needs in_channels == out_channels, got {self.in_channels} and "
                f"{self.out_channels}; set residual=False"
            )

    @property
    def scales(self) -> int:
        return len(self.channels)

    @property
    def skips(self) -> tuple[int, ...]:
        """Skip widths, one per up-block, finest scale first."""
        if isinstance(self.skip_channels, tuple):
            return self.skip_channels
        return (int(self.skip_channels),) * (len(self.channels) - 1)

    @classmethod
    def tiny(cls, **overrides: object) -> "PostProcessingUNetConfig":
        """A 3-scale, few-thousand-parameter variant for tests and smoke runs."""
        base: dict[str, object] = {"channels": (8, 8, 16), "skip_channels": 2}
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()


def _conv_norm_act(in_ch: int, out_ch: int, norm: str, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2),
        _norm(norm, out_ch),
        nn.LeakyReLU(_SLOPE, inplace=True),
    ]


class _Down(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm_act(in_ch, out_ch, norm, stride=2), *_conv_norm_act(out_ch, out_ch, norm)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class _Up(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, skip_from: int, skip_ch: int, norm: str) -> None:
        super().__init__()
        self.skip = (
            nn.Sequential(*_conv_norm_act(skip_from, skip_ch, norm, kernel=1)) if skip_ch > 0 else None
        )
        merged = in_ch + skip_ch
        self.body = nn.Sequential(
            _norm(norm, merged),
            *_conv_norm_act(merged, out_ch, norm),
            *_conv_norm_act(out_ch, out_ch, norm),
        )

    def forward(self, coarse: Tensor, fine: Tensor) -> Tensor:
        x = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True)
        if self.skip is not None:
            x = torch.cat([x, self.skip(fine)], dim=1)
        return self.body(x)


class PostProcessingUNet(nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` for any ``H, W``."""

    def __init__(self, config: PostProcessingUNetConfig = PostProcessingUNetConfig()) -> None:
        super().__init__()
        self.config = config
        ch, norm = config.channels, config.norm
        self.inc = nn.Sequential(*_conv_norm_act(config.in_channels, ch[0], norm))
        self.down = nn.ModuleList(_Down(ch[i - 1], ch[i], norm) for i in range(1, config.scales))
        # up-blocks from the coarsest to the finest scale
        self.up = nn.ModuleList(
            _Up(ch[i], ch[i - 1], ch[i - 1], config.skips[i - 1], norm)
            for i in range(config.scales - 1, 0, -1)
        )
        self.outc = nn.Conv2d(ch[0], config.out_channels, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                nn.init.zeros_(module.bias)  # as dival's init_bias_zero
        if self.config.zero_init_output:
            nn.init.zeros_(self.outc.weight)

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.config.scales - 1)

    def _pad(self, x: Tensor) -> Tensor:
        m = self.size_multiple
        pad_h, pad_w = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        if pad_h == 0 and pad_w == 0:
            return x
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"PostProcessingUNet expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        padded = self._pad(x)
        top, left = (padded.shape[-2] - height) // 2, (padded.shape[-1] - width) // 2
        features = [self.inc(padded)]
        for block in self.down:
            features.append(block(features[-1]))
        y = features[-1]
        for block, fine in zip(self.up, reversed(features[:-1])):
            y = block(y, fine)
        y = self.outc(y)[..., top : top + height, left : left + width]
        return x + y if self.config.residual else y

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
