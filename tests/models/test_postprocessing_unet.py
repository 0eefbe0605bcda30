"""PostProcessingUNet: shapes at awkward sizes, the dival-sized parameter count, residual identity, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctpipe.models.postprocessing_unet import NORMS, PostProcessingUNet, PostProcessingUNetConfig


def _expected_parameters(channels: tuple[int, ...], skip: int, in_ch: int = 1, out_ch: int = 1) -> int:
    """Count of dival's UNet layout with batch norm, written out layer by layer."""

    def conv(i: int, o: int, k: int) -> int:
        return i * o * k * k + o

    def bn(c: int) -> int:
        return 2 * c

    total = conv(in_ch, channels[0], 3) + bn(channels[0])
    for i in range(1, len(channels)):
        c_in, c = channels[i - 1], channels[i]
        total += conv(c_in, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
    for i in range(len(channels) - 1, 0, -1):
        coarse, fine = channels[i], channels[i - 1]
        total += conv(fine, skip, 1) + bn(skip)  # thin skip
        total += bn(coarse + skip) + conv(coarse + skip, fine, 3) + bn(fine) + conv(fine, fine, 3) + bn(fine)
    return total + conv(channels[0], out_ch, 1)


def test_default_matches_dival_lodopab_parameter_count() -> None:
    model = PostProcessingUNet()
    assert model.config.channels == (32, 32, 64, 64, 128) and model.config.scales == 5
    n = model.count_parameters()
    print(f"default PostProcessingUNet parameters: {n}")
    assert n == _expected_parameters((32, 32, 64, 64, 128), 4) == 610_673
    assert 8_000 < PostProcessingUNet(PostProcessingUNetConfig.tiny()).count_parameters() < 9_000


@pytest.mark.parametrize("size", [(45, 45), (45, 37), (1, 5), (64, 64)])
def test_tiny_shapes_for_odd_sizes(size: tuple[int, int]) -> None:
    model = PostProcessingUNet(PostProcessingUNetConfig.tiny())
    x = torch.rand(2, 1, *size)
    assert model(x).shape == x.shape


def test_default_at_lodopab_size() -> None:
    model = PostProcessingUNet().eval()
    x = torch.rand(1, 1, 362, 362)
    with torch.no_grad():
        assert model(x).shape == (1, 1, 362, 362)


def test_crop_is_aligned_with_the_padding() -> None:
    """Padding by hand to the size multiple and cropping must give the network's own output."""
    model = PostProcessingUNet(PostProcessingUNetConfig.tiny(residual=False)).eval()
    x = torch.rand(1, 1, 45, 42)  # multiple 4: pad 3 (1 + 2) rows and 2 (1 + 1) columns
    padded = F.pad(x, (1, 1, 1, 2), mode="replicate")
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., 1:46, 1:43], atol=1e-6)
        shifted = model(F.pad(x, (0, 2, 0, 3), mode="replicate"))[..., :45, :42]
    assert not torch.allclose(model(x).detach(), shifted, atol=1e-4)  # the alignment matters


def test_zero_initialised_residual_is_identity() -> None:
    model = PostProcessingUNet(PostProcessingUNetConfig.tiny(zero_init_output=True))
    x = torch.rand(3, 1, 33, 29)
    assert torch.equal(model(x), x)
    plain = PostProcessingUNet(PostProcessingUNetConfig.tiny(zero_init_output=True, residual=False))
    assert torch.count_nonzero(plain(x)) == 0
    assert not torch.equal(PostProcessingUNet(PostProcessingUNetConfig.tiny())(x), x)


@pytest.mark.parametrize("norm", NORMS)
def test_gradients_reach_every_parameter_and_the_input(norm: str) -> None:
    model = PostProcessingUNet(PostProcessingUNetConfig.tiny(norm=norm))
    x = torch.rand(2, 1, 21, 26, requires_grad=True)
    target = torch.rand(2, 1, 21, 26)
    F.mse_loss(model(x), target).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_skip_widths_and_multichannel() -> None:
    config = PostProcessingUNetConfig(
        in_channels=2, out_channels=3, channels=(4, 8, 8), skip_channels=(0, 3), residual=False
    )
    model = PostProcessingUNet(config)
    assert model.up[-1].skip is None and model.up[0].skip is not None
    assert model(torch.rand(1, 2, 17, 19)).shape == (1, 3, 17, 19)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": ()},
        {"channels": (8, 0)},
        {"skip_channels": (4,)},
        {"skip_channels": -1},
        {"norm": "layer"},
        {"in_channels": 1, "out_channels": 2, "residual": True},
    ],
)
def test_invalid_config_raises(kwargs) -> None:
    with pytest.raises(ValueError):
        PostProcessingUNetConfig(**kwargs)


def test_wrong_input_shape_raises() -> None:
    with pytest.raises(ValueError, match="expects"):
        PostProcessingUNet(PostProcessingUNetConfig.tiny())(torch.rand(1, 2, 16, 16))
