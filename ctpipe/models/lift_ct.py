"""LiftCT: dual-view X-rays -> CT volume by lifting each view's 2D features along its own rays.

The DRRs of :mod:`ctpipe.ops.drr` (parallel beam, detector fitted to the cube) are line integrals along
known axes: the frontal view integrates along A (volume axis 1), the lateral view along R (axis 0), and
both keep S (axis 2) as their rows. So a detector pixel is one ray of the volume, and the volume voxel
``(i, j, k)`` (RAS order) lies on the frontal ray of image pixel ``(row, col) = (n-1-k, n-1-i)`` and on the
lateral ray of pixel ``(n-1-k, n-1-j)`` (row 0 is superior; frontal column 0 is the patient's right,
lateral column 0 anterior). The network uses that geometry instead of learning it:

1. **Linearise** each X-ray back to its line integral, ``p = -log(1 - x) / image_gain`` (the inverse of
   :func:`ctpipe.ops.drr.drr_to_image`), and average-pool it onto the volume grid (``volume_size^2``).
2. **2D encoders** (one per view) turn the pooled projection into ``feature_channels`` maps.
3. **Lift** (:func:`lift_view`): each view's maps are copied along that view's ray axis, giving two
   ``(C, s, s, s)`` volumes whose voxels carry the features of the ray they lie on. Beside them the lifted
   projections themselves, their product normalised per axial slice (the independence estimate of the
   slice from its two marginals), the voxel coordinates and a fixed prior volume (the training split's
   mean, set by the stage before training; 0.5 until then) are stacked as input channels.
4. **3D U-Net**: a stride-2 convolution to ``s/2``, an encoder/decoder with skips over
   ``len(unet_channels)`` levels, upsampling back to ``s`` and a full-resolution convolution that also
   sees the lifted input. The output is ``prior + head`` (a linear residual, so that voxels where the prior
   is air get the same gradient as tissue; a sigmoid around an air prior would be saturated), clamped to
   [0, 1] in eval mode: before training (zero head) the network predicts the prior.

Input ``(B, 2, xray_size, xray_size)`` (frontal, lateral) in [0, 1); output ``(B, 1, s, s, s)`` (in [0, 1] in
eval mode; unclamped in training), RAS axis order, like :class:`ctpipe.models.xray2ct.XRay2CT64`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ctpipe.ops.drr import DEFAULT_IMAGE_GAIN

FRONTAL, LATERAL = 0, 1  # channel order of the X-ray input (ctpipe.ops.drr.VIEWS)
# RAS axis each view's rays run along (its depth) and the axis its image columns run along.
RAY_AXIS = {FRONTAL: 1, LATERAL: 0}
COLUMN_AXIS = {FRONTAL: 0, LATERAL: 1}


@dataclass(frozen=True)
class LiftCTConfig:
    xray_size: int = 128
    volume_size: int = 64
    n_views: int = 2
    image_gain: float = DEFAULT_IMAGE_GAIN  # the prep's gain: p = -log(1 - x) / image_gain
    encoder_channels: int = 32               # width of each view's 2D encoder
    encoder_depth: int = 3                   # 3x3 conv layers per encoder
    feature_channels: int = 16               # lifted feature maps per view
    unet_channels: tuple[int, ...] = (32, 64, 128)  # 3D U-Net widths at s/2, s/4, s/8, ...
    final_channels: int = 16                 # the full-resolution convolution
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.n_views != 2:
            raise ValueError(f"LiftCTConfig: n_views must be 2 (frontal, lateral), got {self.n_views}")
        if self.xray_size % self.volume_size:
            raise ValueError(f"LiftCTConfig: xray_size={self.xray_size} must be a multiple of volume_size="
                             f"{self.volume_size} (each detector pixel group is one ray of the volume grid)")
        levels = len(self.unet_channels)
        if levels < 1 or self.volume_size % 2 ** levels:
            raise ValueError(f"LiftCTConfig: volume_size={self.volume_size} must be divisible by 2^len(unet_channels)"
                             f"={2 ** levels}")
        if not self.image_gain > 0:
            raise ValueError(f"LiftCTConfig: image_gain must be > 0 (the prep's gain), got {self.image_gain}")


# CPU-sized preset (the X-ray -> CT demo) and a tiny one for tests.
LIFT_CPU = LiftCTConfig(xray_size=64, volume_size=32, encoder_channels=16, feature_channels=8,
                        unet_channels=(16, 32, 64), final_channels=16)
LIFT_TINY = LiftCTConfig(xray_size=32, volume_size=16, encoder_channels=8, encoder_depth=2, feature_channels=4,
                         unet_channels=(8, 16), final_channels=8)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(4, channels), channels)


def _conv3d(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), _norm(cout), nn.SiLU())


def _double3d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv3d(cin, cout), _conv3d(cout, cout))


def linearise(xray: Tensor, gain: float) -> Tensor:
    """X-ray image ``1 - exp(-gain p)`` back to the line integral ``p`` (inverse of ``drr_to_image``)."""
    return -torch.log1p(-xray.clamp(0.0, 1.0 - 1e-6)) / gain


def lift_view(image: Tensor, view: int) -> Tensor:
    """Copy ``(B, C, n, n)`` detector maps of one view along its rays into ``(B, C, n, n, n)`` (RAS order).

    Detector row ``r`` is volume S index ``n-1-r``; column ``c`` is index ``n-1-c`` along the view's
    column axis (R for the frontal view, A for the lateral); the ray axis is A (frontal) or R (lateral).
    """
    if view not in RAY_AXIS:
        raise ValueError(f"lift_view: view must be {FRONTAL} (frontal) or {LATERAL} (lateral), got {view}")
    n = image.shape[-1]
    if image.dim() != 4 or image.shape[-2] != n:
        raise ValueError(f"lift_view: expected square maps (B, C, n, n), got {tuple(image.shape)}")
    column_s = image.flip(-2).flip(-1).transpose(-1, -2)  # (B, C, column axis ascending, S ascending)
    if view == FRONTAL:
        return column_s[:, :, :, None, :].expand(-1, -1, n, n, n)  # (R, A broadcast, S)
    return column_s[:, :, None, :, :].expand(-1, -1, n, n, n)  # (R broadcast, A, S)


class _ViewEncoder(nn.Module):
    def __init__(self, width: int, depth: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for _ in range(depth):
            layers += [nn.Conv2d(previous, width, 3, padding=1), _norm(width), nn.SiLU()]
            previous = width
        layers.append(nn.Conv2d(previous, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _UNet3D(nn.Module):
    """Encoder/decoder over ``len(widths)`` levels with skip connections (one stride-2 pool per level)."""

    def __init__(self, cin: int, widths: tuple[int, ...], checkpointing: bool) -> None:
        super().__init__()
        ins = (cin, *widths[:-1])
        self.down = nn.ModuleList([_double3d(a, b) for a, b in zip(ins, widths)])
        self.up = nn.ModuleList([_double3d(widths[k + 1] + widths[k], widths[k]) for k in range(len(widths) - 1)])
        self.checkpointing = checkpointing

    def _run(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = self._run(block, x if k == 0 else F.avg_pool3d(x, 2))
            skips.append(x)
        for k in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            x = self._run(self.up[k], torch.cat([x, skips[k]], dim=1))
        return x


class LiftCT(nn.Module):
    """Geometry-aware dual-view X-ray -> CT network (see the module docstring)."""

    def __init__(self, config: LiftCTConfig = LiftCTConfig()) -> None:
        super().__init__()
        self.config = config
        c, s = config.feature_channels, config.volume_size
        self.encoders = nn.ModuleList(
            [_ViewEncoder(config.encoder_channels, config.encoder_depth, c) for _ in range(config.n_views)])
        self.input_channels = 2 * c + 2 + 1 + 3 + 1  # features, projections, slice product, coordinates, prior
        self.stem = _conv3d(self.input_channels, config.unet_channels[0], stride=2)
        self.unet = _UNet3D(config.unet_channels[0], config.unet_channels, config.gradient_checkpointing)
        self.final = _conv3d(config.unet_channels[0] + self.input_channels, config.final_channels)
        self.head = nn.Conv3d(config.final_channels, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        axis = torch.linspace(-1.0, 1.0, s)
        self.register_buffer("coordinates", torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))[None],
                             persistent=False)
        self.register_buffer("prior", torch.full((1, 1, s, s, s), 0.5))

    @torch.no_grad()
    def set_prior(self, volume: Tensor) -> None:
        """The prior volume (e.g. the training split's mean), ``(s, s, s)`` or ``(1, 1, s, s, s)`` in [0, 1]."""
        s = self.config.volume_size
        volume = volume.reshape(1, 1, *volume.shape[-3:]).to(self.prior)
        if tuple(volume.shape[-3:]) != (s, s, s):
            raise ValueError(f"LiftCT.set_prior: need a {s}^3 volume, got {tuple(volume.shape)}")
        self.prior.copy_(volume.clamp(0.0, 1.0))

    def projections(self, xray: Tensor) -> Tensor:
        """Line integrals pooled onto the volume grid, scaled to about the mean of a [0, 1] volume along the ray."""
        cfg = self.config
        expected = (cfg.n_views, cfg.xray_size, cfg.xray_size)
        if xray.dim() != 4 or tuple(xray.shape[1:]) != expected:
            raise ValueError(f"LiftCT: expected X-rays of shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"(views: frontal, lateral), got {tuple(xray.shape)}")
        p = F.avg_pool2d(linearise(xray.float(), cfg.image_gain), cfg.xray_size // cfg.volume_size)
        return p * (2.0 / cfg.volume_size)

    def lifted_input(self, xray: Tensor) -> Tensor:
        p = self.projections(xray)
        features = [lift_view(self.encoders[v](p[:, v : v + 1]), v) for v in (FRONTAL, LATERAL)]
        raw = [lift_view(p[:, v : v + 1], v) for v in (FRONTAL, LATERAL)]
        slice_total = raw[FRONTAL].mean(dim=2, keepdim=True).clamp_min(1e-3)  # per axial slice (S)
        batch = xray.shape[0]
        fixed = [self.coordinates.expand(batch, -1, -1, -1, -1).to(p), self.prior.expand(batch, -1, -1, -1, -1).to(p)]
        return torch.cat([*features, *raw, raw[FRONTAL] * raw[LATERAL] / slice_total, *fixed], dim=1)

    def forward(self, xray: Tensor) -> Tensor:
        h = self.lifted_input(xray)
        x = self.unet(self.stem(h))
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        x = self.final(torch.cat([x, h], dim=1))
        out = self.prior.to(x) + self.head(x)
        return out if self.training else out.clamp(0.0, 1.0)
