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
   slice from its two marginals), the voxel coordinates and two prior channels are stacked as input.
   ``prior="mean"``: a fixed volume (the training split's mean, set by the stage before training; 0.5
   until then). ``prior="nearest"``: the mean of the ``prior_neighbours`` training volumes whose X-rays are
   nearest (a bank of the training split kept as buffers, :meth:`LiftCT.set_bank`; a training sample never
   meets itself), and the same volume after one multiplicative correction per view that makes its ray sums
   equal the query's calibrated projections (MART; exact for the lateral view, approximate for the frontal).
4. **3D U-Net**: a stride-2 convolution to ``s/2``, an encoder/decoder with skips over
   ``len(unet_channels)`` levels, upsampling back to ``s`` and a full-resolution convolution that also
   sees the lifted input. The output is ``start + head`` (``start``: the mean, or the corrected nearest
   volume; a linear residual, so that voxels where the prior is air get the same gradient as tissue, which
   a sigmoid around an air prior would not), clamped to [0, 1] in eval mode: before training (zero head)
   the network predicts ``start``.

Input ``(B, 2, xray_size, xray_size)`` (frontal, lateral) in [0, 1); output ``(B, 1, s, s, s)`` (in [0, 1] in
eval mode; unclamped in training), RAS axis order, like :class:`ctpipe.models.xray2ct.XRay2CT64`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ctpipe.models.layout import guard_layout
from ctpipe.models.xray2ct import check_xray_shape
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
    # "mean": the prior is one fixed volume (the training mean). "nearest": the training volume whose X-rays are
    # nearest (a bank of the training split kept in the model, N x s^3 floats: for small cohorts), made
    # consistent with the query's own projections by one multiplicative correction per view (MART).
    prior: Literal["mean", "nearest"] = "mean"
    prior_neighbours: int = 1  # "nearest": the mean of this many nearest training volumes
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
        if self.prior_neighbours < 1:
            raise ValueError(f"LiftCTConfig: prior_neighbours must be >= 1, got {self.prior_neighbours}")
        if self.prior not in ("mean", "nearest"):
            raise ValueError(f"LiftCTConfig: prior must be 'mean' or 'nearest', got {self.prior!r}")
        if not self.image_gain > 0:
            raise ValueError(f"LiftCTConfig: image_gain must be > 0 (the prep's gain), got {self.image_gain}")


# CPU-sized preset (the X-ray -> CT demo) and a tiny one for tests.
LIFT_CPU = LiftCTConfig(xray_size=64, volume_size=32, encoder_channels=16, feature_channels=8,
                        unet_channels=(16, 32, 64), final_channels=16, prior="nearest", prior_neighbours=4)
LIFT_TINY = LiftCTConfig(xray_size=32, volume_size=16, encoder_channels=8, encoder_depth=2, feature_channels=4,
                         unet_channels=(8, 16), final_channels=8)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(4, channels), channels)


def _conv3d(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias: the norm right after it removes it), GroupNorm, SiLU."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), _norm(cout), nn.SiLU())


def _double3d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv3d(cin, cout), _conv3d(cout, cout))


def linearise(xray: Tensor, gain: float) -> Tensor:
    """X-ray image ``1 - exp(-gain p)`` back to the line integral ``p`` (inverse of ``drr_to_image``)."""
    return -torch.log1p(-xray.clamp(0.0, 1.0 - 1e-6)) / gain


def _detector_to_ras(image: Tensor) -> Tensor:
    """``(B, C, n, n)`` detector maps -> ``(B, C, column axis ascending, S ascending)``."""
    return image.flip(-2).flip(-1).transpose(-1, -2)


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
    column_s = _detector_to_ras(image)  # (B, C, column axis ascending, S ascending)
    if view == FRONTAL:
        return column_s[:, :, :, None, :].expand(-1, -1, n, n, n)  # (R, A broadcast, S)
    return column_s[:, :, None, :, :].expand(-1, -1, n, n, n)  # (R broadcast, A, S)


class _ViewEncoder(nn.Module):
    def __init__(self, width: int, depth: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for _ in range(depth):
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), _norm(width), nn.SiLU()]
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
        self.input_channels = 2 * c + 2 + 1 + 3 + 2  # features, projections, slice product, coordinates, 2 priors
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
        # the "nearest" prior's bank (empty until set_bank) and the linear map projection -> sum of the volume
        self.register_buffer("bank_xrays", torch.zeros(0, config.n_views * config.xray_size**2))
        self.register_buffer("bank_volumes", torch.zeros(0, 1, s, s, s))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))
        guard_layout(self)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in ("bank_xrays", "bank_volumes"):  # the bank's size is the checkpoint's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]).to(getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_bank(self, xrays: Tensor, volumes: Tensor) -> None:
        """The training split for the "nearest" prior: X-rays ``(N, 2, n, n)`` and volumes ``(N, 1, s, s, s)``.

        Also sets the mean prior and fits ``calibration`` (a, b) so that ``a * p + b`` (``p`` from
        :meth:`projections`) is the sum of the volume along each ray (exactly linear for the prep's DRRs)."""
        s = self.config.volume_size
        if volumes.dim() != 5 or tuple(volumes.shape[1:]) != (1, s, s, s) or xrays.shape[0] != volumes.shape[0]:
            raise ValueError(f"LiftCT.set_bank: need X-rays (N, 2, n, n) and volumes (N, 1, {s}, {s}, {s}), got "
                             f"{tuple(xrays.shape)} and {tuple(volumes.shape)}")
        volumes = volumes.float().to(self.prior.device)
        xrays = xrays.float().to(self.prior.device)
        self.set_prior(volumes.mean(dim=0))
        p = self.projections(xrays)
        sums = torch.cat([volumes.sum(dim=3), volumes.sum(dim=2)], dim=1)  # (N, 2, column axis, S)
        lifted = torch.cat([_detector_to_ras(p[:, v : v + 1]) for v in (FRONTAL, LATERAL)], dim=1)
        design = torch.stack([lifted.flatten(), torch.ones_like(lifted.flatten())], dim=1).double()
        solution = torch.linalg.lstsq(design, sums.flatten()[:, None].double()).solution.flatten()
        self.calibration = solution.float().to(self.prior.device)
        self.bank_xrays = xrays.reshape(xrays.shape[0], -1).clone()
        self.bank_volumes = volumes.clone()

    def nearest_volumes(self, xray: Tensor) -> Tensor:
        """Per sample, the mean of the ``prior_neighbours`` bank volumes whose X-rays are nearest in L2; an exact
        copy of the query (a training sample meeting itself) is skipped."""
        k = self.config.prior_neighbours
        if self.bank_volumes.shape[0] < k + 1:
            raise RuntimeError("LiftCT(prior='nearest') has no bank; call set_bank(train_xrays, train_volumes) first")
        query = xray.reshape(xray.shape[0], -1).float()
        distances = torch.cdist(query, self.bank_xrays.to(query), compute_mode="donot_use_mm_for_euclid_dist")
        distances = torch.where(distances <= 1e-6, torch.full_like(distances, float("inf")), distances)
        nearest = distances.topk(k, dim=1, largest=False).indices  # (B, k)
        return self.bank_volumes.to(query)[nearest].mean(dim=1)

    def consistent(self, volume: Tensor, p: Tensor) -> Tensor:
        """One multiplicative correction per view (MART): scale every ray so that its sum matches the query's
        calibrated projection (ratios clamped to [0.5, 2])."""
        a, b = self.calibration[0], self.calibration[1]
        for view, axis in ((FRONTAL, 3), (LATERAL, 2)):  # rays along A (dim 3) / R (dim 2) of (B, 1, R, A, S)
            wanted = lift_view(a * p[:, view : view + 1] + b, view)
            current = volume.sum(dim=axis, keepdim=True).clamp_min(1e-6)
            volume = volume * (wanted / current).clamp(0.5, 2.0)
        return volume

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
        check_xray_shape(xray, cfg.n_views, cfg.xray_size, "LiftCT")
        p = F.avg_pool2d(linearise(xray.float(), cfg.image_gain), cfg.xray_size // cfg.volume_size)
        return p * (2.0 / cfg.volume_size)

    def priors(self, xray: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(start, raw)``: the volume the head's residual is added to, and the prior before correction."""
        batch = xray.shape[0]
        if self.config.prior == "mean":
            mean = self.prior.to(p).expand(batch, -1, -1, -1, -1)
            return mean, mean
        with torch.no_grad():
            raw = self.nearest_volumes(xray)
            return self.consistent(raw, p), raw

    def lifted_input(self, xray: Tensor, p: Tensor, priors: tuple[Tensor, Tensor]) -> Tensor:
        features = [lift_view(self.encoders[v](p[:, v : v + 1]), v) for v in (FRONTAL, LATERAL)]
        raw = [lift_view(p[:, v : v + 1], v) for v in (FRONTAL, LATERAL)]
        slice_total = raw[FRONTAL].mean(dim=2, keepdim=True).clamp_min(1e-3)  # per axial slice (S)
        coordinates = self.coordinates.expand(xray.shape[0], -1, -1, -1, -1).to(p)
        return torch.cat([*features, *raw, raw[FRONTAL] * raw[LATERAL] / slice_total, coordinates, *priors], dim=1)

    def forward(self, xray: Tensor) -> Tensor:
        p = self.projections(xray)
        start, raw = self.priors(xray, p)
        h = self.lifted_input(xray, p, (start, raw))
        x = self.unet(self.stem(h))
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        x = self.final(torch.cat([x, h], dim=1))
        out = start + self.head(x)
        return out if self.training else out.clamp(0.0, 1.0)
