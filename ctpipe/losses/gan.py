"""GAN losses and the pix2pix objective, written so a trainer with one optimizer per network can use them.

* ``gan_loss(logits, target_is_real, mode)``: ``"vanilla"`` = BCE-with-logits against 1/0 labels,
  ``"lsgan"`` = MSE against 1/0 (the reference's two main modes).
* ``discriminator_loss``: 0.5 * (GAN(D(a, b), real) + GAN(D(a, G(a)), fake)), with G(a) detached.
* ``generator_loss``: GAN(D(a, G(a)), real) + lambda_L1 * |G(a) - b|_1. D is evaluated with a frozen,
  detached snapshot of its parameters, so this loss sends gradients to G only and stays valid after D's
  optimizer has stepped in place. (The reference instead toggles ``requires_grad`` on D.)
* ``pix2pix_losses``: G(a) once, then both of the above from the same D state.

Reference training order (D step, then G step against the updated D) with the lead's ``Stepper``::

    fake = G(a)
    d = discriminator_loss(D, a, b, fake, mode);            stepper.backward(d.total, "D")
    g = generator_loss(D, a, b, fake, mode, lambda_l1);     stepper.backward(g.total, "G")
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

GAN_MODES = ("vanilla", "lsgan")


def gan_loss(logits: torch.Tensor, target_is_real: bool, mode: str) -> torch.Tensor:
    """Mean GAN loss of discriminator ``logits`` against an all-real (1) or all-fake (0) label map."""
    target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"gan_mode={mode!r}: choose one of {GAN_MODES}")


@dataclasses.dataclass(frozen=True)
class DiscriminatorLosses:
    real: torch.Tensor  # GAN(D(a, b), real)
    fake: torch.Tensor  # GAN(D(a, G(a).detach()), fake)
    total: torch.Tensor  # 0.5 * (real + fake), as in the reference (slows D relative to G)


@dataclasses.dataclass(frozen=True)
class GeneratorLosses:
    gan: torch.Tensor  # GAN(D(a, G(a)), real)
    l1: torch.Tensor  # mean |G(a) - b| (unweighted)
    total: torch.Tensor  # gan + lambda_l1 * l1


@dataclasses.dataclass(frozen=True)
class Pix2PixLosses:
    fake_b: torch.Tensor
    generator: GeneratorLosses
    discriminator: DiscriminatorLosses

    def scalars(self) -> dict[str, torch.Tensor]:
        """Detached scalars for logging: G_gan, G_l1, G_total, D_real, D_fake, D_total."""
        g, d = self.generator, self.discriminator
        named = {"G_gan": g.gan, "G_l1": g.l1, "G_total": g.total, "D_real": d.real, "D_fake": d.fake,
                 "D_total": d.total}
        return {k: v.detach() for k, v in named.items()}


def discriminator_loss(discriminator: nn.Module, real_a: torch.Tensor, real_b: torch.Tensor,
                       fake_b: torch.Tensor, gan_mode: str) -> DiscriminatorLosses:
    """D's loss; gradients reach D only (``fake_b`` is detached)."""
    real = gan_loss(discriminator(real_a, real_b), True, gan_mode)
    fake = gan_loss(discriminator(real_a, fake_b.detach()), False, gan_mode)
    return DiscriminatorLosses(real=real, fake=fake, total=0.5 * (real + fake))


def _frozen(module: nn.Module) -> Callable[..., torch.Tensor]:
    """Call ``module`` (unwrapped from DDP) with detached copies of its parameters: no grads reach it."""
    inner = getattr(module, "module", module)
    params = {name: p.detach().clone() for name, p in inner.named_parameters()}

    def call(*args: torch.Tensor) -> torch.Tensor:
        return functional_call(inner, params, args, strict=False)

    return call


def generator_loss(discriminator: nn.Module, real_a: torch.Tensor, real_b: torch.Tensor,
                   fake_b: torch.Tensor, gan_mode: str, lambda_l1: float) -> GeneratorLosses:
    """G's loss; gradients reach G only (through ``fake_b``), never D's parameters."""
    gan = gan_loss(_frozen(discriminator)(real_a, fake_b), True, gan_mode)
    l1 = F.l1_loss(fake_b, real_b)
    return GeneratorLosses(gan=gan, l1=l1, total=gan + lambda_l1 * l1)


def pix2pix_losses(generator: nn.Module, discriminator: nn.Module, real_a: torch.Tensor,
                   real_b: torch.Tensor, gan_mode: str = "vanilla", lambda_l1: float = 100.0) -> Pix2PixLosses:
    """One G forward, then the G terms and the D terms, both against the current D.

    ``generator.total`` has gradients for G only and ``discriminator.total`` for D only, so the two
    backward passes and optimizer steps may run in either order. (For the reference's exact order --
    G's loss against the already-updated D -- call ``discriminator_loss`` / ``generator_loss`` directly.)
    """
    fake_b = generator(real_a)
    return Pix2PixLosses(
        fake_b=fake_b,
        generator=generator_loss(discriminator, real_a, real_b, fake_b, gan_mode, lambda_l1),
        discriminator=discriminator_loss(discriminator, real_a, real_b, fake_b, gan_mode),
    )
