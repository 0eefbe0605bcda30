"""PatchGAN discriminator: 30x30 output at 256^2, a measured 70x70 receptive field, parameter count."""

from __future__ import annotations

import pytest
import torch

from ctpipe.models.pix2pix import count_parameters
from ctpipe.models.patchgan import PatchGANConfig, PatchGANDiscriminator, receptive_field


def test_output_is_30x30_for_256_input() -> None:
    d = PatchGANDiscriminator().eval()
    a = torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        out = d(a, a)
    assert out.shape == (1, 1, 30, 30)


def test_receptive_field_is_70_by_formula_and_by_gradient() -> None:
    assert receptive_field(3) == 70
    torch.manual_seed(0)
    d = PatchGANDiscriminator(PatchGANConfig(ndf=4)).eval()  # eval BatchNorm is per-pixel: no global coupling
    a = torch.randn(1, 1, 128, 128, requires_grad=True)
    b = torch.randn(1, 1, 128, 128)
    out = d(a, b)
    i, j = out.shape[-2] // 2, out.shape[-1] // 2
    out[0, 0, i, j].backward()
    assert a.grad is not None
    rows = torch.nonzero(a.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(a.grad[0, 0].abs().sum(0)).flatten()
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70


def test_parameter_count_matches_reference() -> None:
    # reference prints "[Network D] Total number of parameters : 2.769 M" for 3+3 input channels
    d6 = PatchGANDiscriminator(PatchGANConfig(in_channels=6))
    expected = (6 * 64 * 16 + 64) + (64 * 128 * 16 + 2 * 128) + (128 * 256 * 16 + 2 * 256) \
        + (256 * 512 * 16 + 2 * 512) + (512 * 16 + 1)
    assert count_parameters(d6) == expected == 2_768_705
    assert round(count_parameters(d6) / 1e6, 3) == 2.769


def test_channel_mismatch_is_explained() -> None:
    d = PatchGANDiscriminator()
    with pytest.raises(ValueError, match="in_channels"):
        d(torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="spatial"):
        d(torch.randn(1, 1, 64, 64), torch.randn(1, 1, 32, 32))


def test_instance_norm_variant_runs() -> None:
    d = PatchGANDiscriminator(PatchGANConfig(norm="instance", ndf=8))
    assert d(torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64)).shape == (2, 1, 6, 6)
