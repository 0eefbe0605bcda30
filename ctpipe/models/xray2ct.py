"""XRay2CT64: dual-view X-rays (frontal, lateral) -> a 64^3 CT volume in [0, 1].

Architecture (about 15M parameters at the default config):

1. **X-ray conditioning** (:class:`XRayEncoder`): a 2D CNN per view (one shared network, or one per
   view when ``shared_encoder=False``) with ``len(encoder_channels)`` stride-2 stages turns each
   ``xray_size^2`` image into ``(xray_size / 2^stages)^2`` feature tokens, projected to
   ``embed_dim`` and tagged with a learnable 2D position embedding and a learnable view embedding.
2. **Hybrid 3D ViT** (:class:`VolumeTransformer`): the volume tokens come from a *learnable* initial
   volume embedding (``volume_embed_channels x volume_size^3``) cut into ``patch_size^3`` patches by a
   strided Conv3d, plus a learnable 3D position embedding. Each pre-norm block does self-attention
   over the volume tokens, cross-attention from the volume tokens to the X-ray tokens, then an MLP
   (all attention through :func:`torch.nn.functional.scaled_dot_product_attention`). Blocks can be
   gradient-checkpointed (``gradient_checkpointing=True``; ``torch.utils.checkpoint``,
   ``use_reentrant=False``).
3. **3D conv decoder** (:class:`VolumeDecoder`): the ``(volume_size / patch_size)^3`` token grid is
   upsampled by stride-2 transposed convolutions (one stage per entry of ``decoder_channels``) to
   ``volume_size^3`` and mapped to one channel.

The output goes through a **sigmoid**, so it lies in (0, 1) like the targets (HU window
[-1024, 1476] scaled to [0, 1]); gradients never vanish the way a hard clamp's do.

Input: ``(B, n_views, xray_size, xray_size)`` with views in the order (frontal, lateral), values in
[0, 1] (see :func:`ctpipe.ops.drr.drr_to_image`). Output: ``(B, 1, volume_size, volume_size,
volume_size)`` in RAS axis order (the order the targets are stored in).

The convolutions directly followed by a GroupNorm have no bias and the attention has no key bias: the
softmax removes a shift of a query's logits, a GroupNorm with one channel per group a shift of its
channel, so such a parameter's gradient is zero by construction, and Adam would turn its rounding noise
into lr-sized steps (a DDP run would drift from a one-process run of the same global batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ctpipe.models.layout import guard_layout


@dataclass(frozen=True)
class XRay2CTConfig:
    xray_size: int = 128
    volume_size: int = 64
    n_views: int = 2
    shared_encoder: bool = True
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)
    embed_dim: int = 256
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    patch_size: int = 8
    volume_embed_channels: int = 1
    decoder_channels: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        stride = 2 ** len(self.encoder_channels)
        if self.xray_size % stride:
            raise ValueError(f"XRay2CTConfig: xray_size={self.xray_size} must be divisible by 2^len(encoder_channels)={stride}")
        if self.volume_size % self.patch_size:
            raise ValueError(f"XRay2CTConfig: volume_size={self.volume_size} must be divisible by patch_size={self.patch_size}")
        if self.patch_size != 2 ** len(self.decoder_channels):
            raise ValueError(
                f"XRay2CTConfig: patch_size={self.patch_size} must equal 2^len(decoder_channels)="
                f"{2 ** len(self.decoder_channels)} (one stride-2 decoder stage per halving)"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"XRay2CTConfig: embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")

    @property
    def xray_tokens_per_view(self) -> int:
        return (self.xray_size // 2 ** len(self.encoder_channels)) ** 2

    @property
    def token_grid(self) -> int:
        return self.volume_size // self.patch_size


# Tiny config for tests: 32^2 X-rays -> 16^3 volumes, a few thousand parameters.
XRAY2CT_TINY = XRay2CTConfig(
    xray_size=32,
    volume_size=16,
    encoder_channels=(8, 16),
    embed_dim=32,
    depth=2,
    num_heads=4,
    mlp_ratio=2.0,
    patch_size=4,
    decoder_channels=(16, 8),
)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (batch-size independent, fine for the small 3D batches)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


# ---- X-ray conditioning --------------------------------------------------------------------------
def check_xray_shape(xray: Tensor, n_views: int, size: int, who: str) -> None:
    """Refuse anything but a (B, n_views, size, size) batch of X-rays, naming the network that needs it."""
    expected = (n_views, size, size)
    if xray.dim() != 4 or tuple(xray.shape[1:]) != expected:
        raise ValueError(f"{who}: expected X-rays of shape (B, {n_views}, {size}, {size}) (views: frontal, "
                         f"lateral), got {tuple(xray.shape)}")


class _Encoder2D(nn.Module):
    """Stride-2 conv stages: (B, 1, S, S) -> (B, C_last, S / 2^n, S / 2^n); no conv bias before a norm."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False),
                group_norm(width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                group_norm(width),
                nn.SiLU(),
            ]
            previous = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class XRayEncoder(nn.Module):
    """(B, n_views, S, S) -> X-ray tokens (B, n_views * T, embed_dim) with position and view embeddings."""

    def __init__(self, config: XRay2CTConfig) -> None:
        super().__init__()
        self.config = config
        n_encoders = 1 if config.shared_encoder else config.n_views
        self.cnn = nn.ModuleList([_Encoder2D(config.encoder_channels) for _ in range(n_encoders)])
        self.project = nn.Linear(config.encoder_channels[-1], config.embed_dim)
        self.position = nn.Parameter(torch.zeros(1, 1, config.xray_tokens_per_view, config.embed_dim))
        self.view = nn.Parameter(torch.zeros(1, config.n_views, 1, config.embed_dim))
        self.norm = nn.LayerNorm(config.embed_dim)
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.view, std=0.02)

    def forward(self, xray: Tensor) -> Tensor:
        cfg = self.config
        check_xray_shape(xray, cfg.n_views, cfg.xray_size, "XRayEncoder")
        batch = xray.shape[0]
        if cfg.shared_encoder:
            features = self.cnn[0](xray.reshape(batch * cfg.n_views, 1, cfg.xray_size, cfg.xray_size))
            features = features.reshape(batch, cfg.n_views, *features.shape[1:])
        else:
            features = torch.stack([net(xray[:, v : v + 1]) for v, net in enumerate(self.cnn)], dim=1)
        tokens = features.flatten(3).transpose(2, 3)  # (B, V, T, C)
        tokens = self.project(tokens) + self.position + self.view
        return self.norm(tokens.reshape(batch, cfg.n_views * cfg.xray_tokens_per_view, cfg.embed_dim))


# ---- transformer ---------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention (self when ``context`` is None, else cross) via scaled_dot_product_attention.

    The key projection has no bias: it would shift every logit of a query by the same amount, which the
    softmax removes (its gradient is exactly zero)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        batch, n, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(x).reshape(batch, n, heads, head_dim).transpose(1, 2)
        k = self.k(context).reshape(batch, context.shape[1], heads, head_dim).transpose(1, 2)
        v = self.v(context).reshape(batch, context.shape[1], heads, head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(attended.transpose(1, 2).reshape(batch, n, dim))


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: x += SelfAttn(LN x); x += CrossAttn(LN x, memory); x += MLP(LN x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm_self(x))
        x = x + self.cross_attn(self.norm_cross(x), memory)
        return x + self.mlp(self.norm_mlp(x))


class VolumeTransformer(nn.Module):
    """Learnable initial volume -> patch tokens -> blocks attending to X-ray tokens -> (B, D, g, g, g)."""

    def __init__(self, config: XRay2CTConfig) -> None:
        super().__init__()
        self.config = config
        size, dim, grid = config.volume_size, config.embed_dim, config.token_grid
        self.initial_volume = nn.Parameter(torch.zeros(1, config.volume_embed_channels, size, size, size))
        self.patch_embed = nn.Conv3d(config.volume_embed_channels, dim, config.patch_size, stride=config.patch_size)
        self.position = nn.Parameter(torch.zeros(1, grid**3, dim))
        self.blocks = nn.ModuleList(
            [CrossAttentionBlock(dim, config.num_heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.initial_volume, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, memory: Tensor) -> Tensor:
        batch, grid = memory.shape[0], self.config.token_grid
        tokens = self.patch_embed(self.initial_volume.to(memory.dtype)).flatten(2).transpose(1, 2) + self.position
        x = tokens.expand(batch, -1, -1)
        use_checkpoint = self.config.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, memory, use_reentrant=False) if use_checkpoint else block(x, memory)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(batch, self.config.embed_dim, grid, grid, grid)


# ---- decoder -------------------------------------------------------------------------------------
class UpBlock3D(nn.Module):
    """Stride-2 transposed conv, then a 3^3 conv; GroupNorm + SiLU after each (so neither conv has a bias)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2, bias=False),
            group_norm(out_channels),
            nn.SiLU(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels),
            nn.SiLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VolumeDecoder(nn.Module):
    """(B, C, g, g, g) -> (B, 1, g * 2^n, ...) through ``n = len(channels)`` UpBlock3D stages, sigmoid output."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        widths = (in_channels, *channels)
        self.stages = nn.ModuleList([UpBlock3D(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.head = nn.Conv3d(channels[-1], 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return torch.sigmoid(self.head(x))


class XRay2CT64(nn.Module):
    """Dual-view X-ray -> CT volume network (see the module docstring)."""

    def __init__(self, config: XRay2CTConfig = XRay2CTConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder = XRayEncoder(config)
        self.transformer = VolumeTransformer(config)
        self.decoder = VolumeDecoder(config.embed_dim, config.decoder_channels)
        guard_layout(self)

    def features(self, xray: Tensor) -> Tensor:
        """The transformer's token grid ``(B, embed_dim, g, g, g)`` (shared with XRay2CTProgressive)."""
        return self.transformer(self.encoder(xray))

    def forward(self, xray: Tensor) -> Tensor:
        return self.decoder(self.features(xray))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
