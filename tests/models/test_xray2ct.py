import dataclasses

import pytest
import torch

from ctpipe.models.xray2ct import XRAY2CT_TINY, XRay2CT64, XRay2CTConfig, count_parameters


def tiny_input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2, XRAY2CT_TINY.xray_size, XRAY2CT_TINY.xray_size, generator=generator)


def test_default_config_has_about_15m_parameters():
    with torch.device("meta"):  # count only: no memory, no forward at the default size
        model = XRay2CT64(XRay2CTConfig())
    n = count_parameters(model)
    assert 12_000_000 <= n <= 18_000_000, n
    # the learnable initial volume embedding is a 64^3 parameter grid
    assert model.transformer.initial_volume.shape == (1, 1, 64, 64, 64)


def test_tiny_forward_backward():
    torch.manual_seed(0)
    model = XRay2CT64(XRAY2CT_TINY)
    x = tiny_input()
    out = model(x)
    size = XRAY2CT_TINY.volume_size
    assert out.shape == (2, 1, size, size, size)
    assert out.min() > 0 and out.max() < 1  # sigmoid output
    target = torch.rand_like(out)
    torch.nn.functional.l1_loss(out, target).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.transformer.initial_volume.grad.abs().sum() > 0  # the volume embedding is learned


def test_output_depends_on_each_view_and_on_batch_items_independently():
    torch.manual_seed(0)
    model = XRay2CT64(XRAY2CT_TINY).eval()
    x = tiny_input()
    with torch.no_grad():
        base = model(x)
        changed = x.clone()
        changed[0, 1] = torch.rand_like(changed[0, 1])  # new lateral view for sample 0 only
        other = model(changed)
    assert not torch.allclose(base[0], other[0])
    assert torch.allclose(base[1], other[1], atol=1e-6)


def test_separate_encoders_add_exactly_one_encoder():
    shared = XRay2CT64(XRAY2CT_TINY)
    separate = XRay2CT64(dataclasses.replace(XRAY2CT_TINY, shared_encoder=False))
    one_encoder = count_parameters(shared.encoder.cnn[0])
    assert count_parameters(separate) - count_parameters(shared) == one_encoder
    assert separate(tiny_input()).shape == shared(tiny_input()).shape


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = XRay2CT64(XRAY2CT_TINY)
    checkpointed = XRay2CT64(dataclasses.replace(XRAY2CT_TINY, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    x = tiny_input()
    target = torch.rand(2, 1, 16, 16, 16)
    for model in (plain, checkpointed):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-5), name


def test_config_validation_names_the_fix():
    with pytest.raises(ValueError, match="patch_size"):
        XRay2CTConfig(patch_size=4)  # three decoder stages need patch 8
    with pytest.raises(ValueError, match="xray_size"):
        XRay2CTConfig(xray_size=100)
    with pytest.raises(ValueError, match=r"\(B, 2, 32, 32\)"):
        XRay2CT64(XRAY2CT_TINY)(torch.zeros(1, 1, 32, 32))
