import dataclasses

import pytest
import torch

from ctpipe.models.xray2ct import XRAY2CT_TINY, XRay2CT64, count_parameters
from ctpipe.models.xray2ct_progressive import XRAY2CT_PROGRESSIVE_TINY, XRay2CTProgressive, XRay2CTProgressiveConfig


def xrays(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 2, XRAY2CT_TINY.xray_size, XRAY2CT_TINY.xray_size, generator=torch.Generator().manual_seed(1))


def test_tiny_forward_gives_three_scales_in_unit_range():
    torch.manual_seed(0)
    out = XRay2CTProgressive(XRAY2CT_PROGRESSIVE_TINY)(xrays())
    assert sorted(out) == [8, 16, 32]
    for size, volume in out.items():
        assert volume.shape == (2, 1, size, size, size)
        assert 0 < volume.min() and volume.max() < 1


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = XRay2CTProgressive(XRAY2CT_PROGRESSIVE_TINY)
    checkpointed = XRay2CTProgressive(dataclasses.replace(XRAY2CT_PROGRESSIVE_TINY, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.transformer.config.gradient_checkpointing  # the flag reaches the ViT blocks
    x = xrays()
    target = torch.rand(2, 1, 32, 32, 32)
    for model in (plain, checkpointed):
        out = model(x)
        (torch.nn.functional.l1_loss(out[32], target) + out[16].mean() + out[8].square().mean()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-5), name


def test_reuses_the_stage1_encoder_and_transformer():
    torch.manual_seed(0)
    stage1 = XRay2CT64(XRAY2CT_TINY).eval()
    direct = XRay2CTProgressive(XRAY2CT_PROGRESSIVE_TINY).eval()
    direct.load_stage1_state_dict(stage1.state_dict())
    x = xrays()
    with torch.no_grad():
        assert torch.equal(direct.transformer(direct.encoder(x)), stage1.features(x))
    with pytest.raises(KeyError, match="lacks"):
        direct.load_stage1_state_dict({})


def test_default_config_counts_and_validation():
    config = XRay2CTProgressiveConfig()
    assert config.output_sizes == (64, 128, 256)
    with torch.device("meta"):
        model = XRay2CTProgressive(config)
    assert 12_000_000 < count_parameters(model) < 20_000_000
    with pytest.raises(ValueError, match="output_size"):
        XRay2CTProgressiveConfig(output_size=128)
