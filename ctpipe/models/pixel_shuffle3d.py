"""3D sub-pixel rearrangement: PixelShuffle3D and its exact inverse PixelUnshuffle3D.

Channel layout (the 3D analogue of :func:`torch.nn.functional.pixel_shuffle`)::

    shuffled[b, c, d*r + i, h*r + j, w*r + k] = x[b, c*r^3 + i*r^2 + j*r + k, d, h, w]

Both are pure reshapes/permutations, so they are exact inverses of each other (bit-for-bit).
"""

from __future__ import annotations

from torch import Tensor, nn


def pixel_shuffle3d(x: Tensor, factor: int) -> Tensor:
    """(B, C*r^3, D, H, W) -> (B, C, D*r, H*r, W*r)."""
    if x.dim() != 5:
        raise ValueError(f"pixel_shuffle3d expects a 5D tensor (B, C, D, H, W), got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    r = int(factor)
    if r < 1 or c % r**3:
        raise ValueError(f"pixel_shuffle3d: channels ({c}) must be divisible by factor^3 = {r**3}")
    out_c = c // r**3
    x = x.reshape(b, out_c, r, r, r, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, out_c, d * r, h * r, w * r)


def pixel_unshuffle3d(x: Tensor, factor: int) -> Tensor:
    """(B, C, D*r, H*r, W*r) -> (B, C*r^3, D, H, W); the inverse of :func:`pixel_shuffle3d`."""
    if x.dim() != 5:
        raise ValueError(f"pixel_unshuffle3d expects a 5D tensor (B, C, D, H, W), got shape {tuple(x.shape)}")
    b, c, dr, hr, wr = x.shape
    r = int(factor)
    if r < 1 or dr % r or hr % r or wr % r:
        raise ValueError(f"pixel_unshuffle3d: spatial size {(dr, hr, wr)} must be divisible by factor {r}")
    d, h, w = dr // r, hr // r, wr // r
    x = x.reshape(b, c, d, r, h, r, w, r)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * r**3, d, h, w)


class PixelShuffle3D(nn.Module):
    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_shuffle3d(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class PixelUnshuffle3D(nn.Module):
    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_unshuffle3d(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
