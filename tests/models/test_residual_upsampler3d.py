import dataclasses

import torch
import torch.nn.functional as F

from ctpipe.models.residual_upsampler3d import RESIDUAL_UPSAMPLER3D_TINY, ResidualUpsampler3D, ResidualUpsampler3DConfig
from ctpipe.models.xray2ct import count_parameters


def test_zero_init_returns_the_trilinear_baseline_bit_for_bit():
    torch.manual_seed(0)
    model = ResidualUpsampler3D(RESIDUAL_UPSAMPLER3D_TINY)
    x = torch.rand(2, 1, 8, 8, 8)
    out = model(x)
    assert sorted(out) == [8, 16, 32]
    assert torch.equal(out[8], x)
    assert torch.equal(out[16], F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False))
    assert torch.equal(out[32], F.interpolate(x, scale_factor=4, mode="trilinear", align_corners=False))


def test_one_step_moves_away_from_the_baseline_toward_the_target():
    torch.manual_seed(0)
    model = ResidualUpsampler3D(RESIDUAL_UPSAMPLER3D_TINY)
    x = torch.rand(1, 1, 8, 8, 8)
    target = torch.rand(1, 1, 32, 32, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = F.mse_loss(model(x)[32], target)
    before.backward()
    assert model.heads[2].weight.grad.abs().sum() > 0  # the zero head still learns
    optimizer.step()
    assert F.mse_loss(model(x)[32], target) < before


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = ResidualUpsampler3D(RESIDUAL_UPSAMPLER3D_TINY)
    for head in plain.heads:  # away from zero init, so every layer gets a gradient
        torch.nn.init.normal_(head.weight, std=0.1)
    checkpointed = ResidualUpsampler3D(dataclasses.replace(RESIDUAL_UPSAMPLER3D_TINY, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 8, 8, 8)
    for model in (plain, checkpointed):
        out = model(x)
        sum(o.square().mean() for o in out.values()).backward()
    assert plain.stem[0].weight.grad.abs().sum() > 0
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-5), name


def test_default_config_sizes():
    config = ResidualUpsampler3DConfig()
    assert config.output_sizes == (64, 128, 256)
    with torch.device("meta"):
        model = ResidualUpsampler3D(config)
    assert 100_000 < count_parameters(model) < 2_000_000
