"""pix2pix U-Net generator: shapes, the reference's parameter count, dropout behaviour, init, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctpipe.models.pix2pix import (GENERATORS, UNetGenerator, UNetGeneratorConfig, build_generator,
                                   count_parameters)


def tiny(norm: str = "batch", dropout: bool = True) -> UNetGenerator:
    return UNetGenerator(UNetGeneratorConfig(num_downs=6, ngf=8, norm=norm, dropout=dropout))


def unet_param_formula(in_c: int, out_c: int, ngf: int, num_downs: int, norm: str) -> int:
    """Count written out level by level from the architecture (not from the module)."""
    bias = norm == "instance"
    norm_params = 2 if norm == "batch" else 0  # affine BatchNorm; InstanceNorm without affine
    # (outer, inner) channels per level, outermost first
    levels = [(out_c, ngf), (ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)]
    levels += [(8 * ngf, 8 * ngf)] * (num_downs - 4)
    total = 0
    for i, (outer, inner) in enumerate(levels):
        outermost, innermost = i == 0, i == len(levels) - 1
        down_in = in_c if outermost else outer
        total += down_in * inner * 16 + (inner if bias else 0)  # down conv
        up_in = inner if innermost else 2 * inner
        total += up_in * outer * 16 + (outer if (bias or outermost) else 0)  # up conv
        if not outermost and not innermost:
            total += norm_params * inner  # down norm
        if not outermost:
            total += norm_params * outer  # up norm
    return total


def test_tiny_generator_shape_and_range() -> None:
    for norm in ("batch", "instance"):
        g = tiny(norm)
        y = g(torch.randn(2, 1, 64, 64) * 3)
        assert y.shape == (2, 1, 64, 64)
        assert y.abs().max() < 1.0  # Tanh output


def test_unet_256_shape_at_256() -> None:
    g = build_generator("unet_256").eval()
    with torch.no_grad():
        y = g(torch.randn(1, 1, 256, 256))
    assert y.shape == (1, 1, 256, 256)


def test_presets() -> None:
    assert GENERATORS["unet_256"].num_downs == 8 and GENERATORS["unet_512"].num_downs == 9
    assert GENERATORS["unet_256"].ngf == 64 and GENERATORS["unet_256"].dropout
    with pytest.raises(KeyError, match="unet_256"):
        build_generator("unet_128x")


def test_unet_256_parameter_count_matches_reference() -> None:
    # The reference prints "[Network G] Total number of parameters : 54.414 M" for its default pix2pix
    # (unet_256, ngf 64, batch norm, 3 -> 3 channels). Exact count of that architecture: 54,413,955.
    g = UNetGenerator(UNetGeneratorConfig(num_downs=8, in_channels=3, out_channels=3, norm="batch"))
    n = count_parameters(g)
    assert n == 54_413_955
    assert round(n / 1e6, 3) == 54.414
    assert n == unet_param_formula(3, 3, 64, 8, "batch")
    # the CT variant (1 -> 1 channels) and the instance-norm variant follow the same formula
    for cfg in (UNetGeneratorConfig(), UNetGeneratorConfig(norm="instance"), UNetGeneratorConfig(num_downs=9)):
        assert count_parameters(UNetGenerator(cfg)) == unet_param_formula(1, 1, 64, cfg.num_downs, cfg.norm)


def test_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    g = tiny(dropout=True)
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 6 - 5
    x = torch.randn(2, 1, 64, 64)
    g.train()
    assert not torch.equal(g(x), g(x))  # dropout masks differ
    g.eval()
    with torch.no_grad():
        assert torch.equal(g(x), g(x))
    g_no = tiny(dropout=False).train()
    assert sum(isinstance(m, nn.Dropout) for m in g_no.modules()) == 0
    assert torch.equal(g_no(x), g_no(x))  # train mode without dropout is deterministic


def test_unet_256_has_three_dropout_blocks() -> None:
    g = build_generator("unet_256")
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 3


def test_weight_init_normal_002() -> None:
    torch.manual_seed(0)
    g = UNetGenerator(UNetGeneratorConfig(num_downs=6, ngf=16))
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01)


def test_gradients_reach_every_parameter() -> None:
    g = tiny("instance")
    g(torch.randn(1, 1, 64, 64)).square().mean().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_skip_connection_preserves_input_tensor() -> None:
    g = tiny().train()
    x = torch.randn(1, 1, 64, 64)
    x0 = x.clone()
    g(x)
    assert torch.equal(x, x0)  # no in-place activation touches the caller's tensor


def test_bad_input_size_names_the_fix() -> None:
    with pytest.raises(ValueError, match="multiples of 64"):
        tiny()(torch.randn(1, 1, 48, 64))
    with pytest.raises(ValueError, match="num_downs"):
        UNetGeneratorConfig(num_downs=4)
    with pytest.raises(ValueError, match="norm"):
        UNetGeneratorConfig(norm="group")
