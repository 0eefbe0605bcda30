"""GAN losses on known logits, pix2pix loss terms, and gradient routing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctpipe.losses.gan import discriminator_loss, gan_loss, generator_loss, pix2pix_losses
from ctpipe.models.patchgan import PatchGANConfig, PatchGANDiscriminator
from ctpipe.models.pix2pix import UNetGenerator, UNetGeneratorConfig


def test_gan_loss_known_values() -> None:
    zeros = torch.zeros(2, 1, 3, 3)
    assert gan_loss(zeros, True, "vanilla").item() == pytest.approx(math.log(2))
    assert gan_loss(zeros, False, "vanilla").item() == pytest.approx(math.log(2))
    x = torch.tensor([2.0, -1.0])
    assert gan_loss(x, True, "vanilla").item() == pytest.approx(
        (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2)
    assert gan_loss(x, False, "vanilla").item() == pytest.approx(
        (math.log1p(math.exp(2.0)) + math.log1p(math.exp(-1.0))) / 2)
    assert gan_loss(torch.full((4,), 0.5), True, "lsgan").item() == pytest.approx(0.25)
    assert gan_loss(torch.tensor([0.5, 2.0]), False, "lsgan").item() == pytest.approx((0.25 + 4) / 2)
    with pytest.raises(ValueError, match="vanilla"):
        gan_loss(zeros, True, "wgan")


def small_pair() -> tuple[UNetGenerator, PatchGANDiscriminator]:
    torch.manual_seed(0)
    g = UNetGenerator(UNetGeneratorConfig(num_downs=5, ngf=4))
    d = PatchGANDiscriminator(PatchGANConfig(ndf=4, n_layers=2))
    return g, d


@pytest.mark.parametrize("mode", ["vanilla", "lsgan"])
def test_pix2pix_losses_match_hand_computation(mode: str) -> None:
    g, d = small_pair()
    a, b = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    d.eval()  # fixed BN statistics so repeated D calls are comparable
    losses = pix2pix_losses(g, d, a, b, mode, lambda_l1=100.0)
    fake = losses.fake_b.detach()
    crit = (lambda z, t: F.binary_cross_entropy_with_logits(z, torch.full_like(z, t))) if mode == "vanilla" \
        else (lambda z, t: F.mse_loss(z, torch.full_like(z, t)))
    with torch.no_grad():
        d_real, d_fake = crit(d(a, b), 1.0), crit(d(a, fake), 0.0)
        g_gan, l1 = crit(d(a, fake), 1.0), (fake - b).abs().mean()
    assert losses.discriminator.real.item() == pytest.approx(d_real.item(), rel=1e-5)
    assert losses.discriminator.fake.item() == pytest.approx(d_fake.item(), rel=1e-5)
    assert losses.discriminator.total.item() == pytest.approx(0.5 * (d_real + d_fake).item(), rel=1e-5)
    assert losses.generator.gan.item() == pytest.approx(g_gan.item(), rel=1e-5)
    assert losses.generator.l1.item() == pytest.approx(l1.item(), rel=1e-5)
    assert losses.generator.total.item() == pytest.approx((g_gan + 100 * l1).item(), rel=1e-5)
    assert set(losses.scalars()) == {"G_gan", "G_l1", "G_total", "D_real", "D_fake", "D_total"}


def test_gradients_are_routed_to_their_own_network() -> None:
    g, d = small_pair()
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    losses = pix2pix_losses(g, d, a, b, "vanilla", 100.0)
    losses.generator.total.backward()
    assert all(p.grad is None for p in d.parameters())
    assert all(p.grad is not None for p in g.parameters())
    g.zero_grad(set_to_none=True)
    losses.discriminator.total.backward()
    assert all(p.grad is None for p in g.parameters())
    assert all(p.grad is not None for p in d.parameters())


def test_reference_order_d_step_then_g_step_works() -> None:
    g, d = small_pair()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    losses = pix2pix_losses(g, d, a, b, "lsgan", 100.0)
    d_before = [p.detach().clone() for p in d.parameters()]
    losses.discriminator.total.backward()
    opt_d.step()  # in-place update of D before G's backward: G's graph must still be valid
    opt_d.zero_grad(set_to_none=True)
    losses.generator.total.backward()
    assert all(p.grad is None for p in d.parameters())
    opt_g.step()
    assert any(not torch.equal(p, q) for p, q in zip(d.parameters(), d_before))
    # the separate functions give the reference's order: G's GAN term against the updated D
    fake = g(a)
    dl = discriminator_loss(d, a, b, fake, "lsgan")
    gl = generator_loss(d, a, b, fake, "lsgan", 100.0)
    assert torch.isfinite(dl.total) and torch.isfinite(gl.total)
