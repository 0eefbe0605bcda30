"""Training losses: the term table (:mod:`.terms`), the one weighted / multi-scale sum with the 2D
:class:`CompositeLoss` and the 3D :class:`VolumeLoss` (:mod:`.composite`), and the pix2pix GAN losses
(:mod:`.gan`)."""

from ctpipe.losses.composite import (
    TOTAL,
    CompositeLoss,
    LossWeights,
    VolumeLoss,
    VolumeLossConfig,
    multiscale_sum,
    trainer_log,
    weighted_sum,
)
from ctpipe.losses.terms import MS_SSIM_MIN_SIZE, TERMS, edge_loss, sobel_magnitude, ssim3d, ssim3d_loss

__all__ = [
    "MS_SSIM_MIN_SIZE",
    "TERMS",
    "TOTAL",
    "CompositeLoss",
    "LossWeights",
    "VolumeLoss",
    "VolumeLossConfig",
    "edge_loss",
    "multiscale_sum",
    "sobel_magnitude",
    "ssim3d",
    "ssim3d_loss",
    "trainer_log",
    "weighted_sum",
]
