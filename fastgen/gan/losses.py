"""Adversarial losses of GANs on raw discriminator logits (critic outputs for WGAN).

Every loss takes logits of any shape ((B,), (B, 1), a PatchGAN map (B, 1, H, W), ...) and reduces
with the mean over all elements, so a patch map counts each patch as one decision. The arithmetic
is float32 (float16 / bfloat16 logits are upcast, float64 is kept so that gradcheck works) and the
result is a 0-d tensor of that dtype. The log-sigmoid terms are written with softplus:

    -log sigmoid(x) = softplus(-x),    -log(1 - sigmoid(x)) = softplus(x),

which stays finite for |x| in the thousands where log(sigmoid(x)) returns -inf.

    kind      discriminator loss                          generator loss
    ns        softplus(-r) + softplus(f)                  softplus(-f)        Goodfellow et al. 2014
    minimax   softplus(-r) + softplus(f)                  -softplus(f)        Goodfellow et al. 2014
    wgan      f - r                                       -f                  Arjovsky et al. 2017
    lsgan     (r - 1)^2 / 2 + f^2 / 2                     (f - 1)^2 / 2       Mao et al. 2016 (a=0, b=c=1)
    hinge     relu(1 - r) + relu(1 + f)                   -f                  Lim & Ye 2017; Miyato et al. 2018

(each term is a mean over its own tensor; r = D(real), f = D(fake)). "ns" and "minimax" share the
discriminator loss; they differ on the generator side, where minimax minimises log(1 - D(G(z))),
whose gradient vanishes while D confidently rejects the fakes, and ns (non-saturating) maximises
log D(G(z)) instead. WGAN needs a Lipschitz critic: pair it with a gradient penalty
(:mod:`fastgen.gan.penalty`) or spectral norm (:func:`fastgen.gan.regularizers.apply_spectral_norm`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import _validate

__all__ = ["LOSS_KINDS", "discriminator_loss", "generator_loss", "adversarial_reconstruction_loss"]

LOSS_KINDS = ("ns", "minimax", "wgan", "lsgan", "hinge")


def _check_kind(kind: object) -> str:
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    return kind


def _logits(name: str, x: object) -> torch.Tensor:
    """A non-empty floating tensor of any shape, as float32 (float64 kept)."""
    x = _validate.check_floating(name, x, min_dim=0)
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty: the mean of no logits is undefined")
    return x.to(torch.promote_types(x.dtype, torch.float32))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "ns") -> torch.Tensor:
    """The discriminator's (critic's) loss, to be minimised by D.

    Args:
        real_logits: D(real), raw logits of any shape (e.g. (B,) or a patch map (B, 1, H, W)),
            float32 / float16 / bfloat16 / float64.
        fake_logits: D(fake), same rules; its batch may differ from real_logits', its device may not.
        kind: one of :data:`LOSS_KINDS` (the table in the module docstring gives each formula).

    Returns a 0-d float32 tensor (float64 if either input is float64), differentiable with respect
    to both inputs.
    """
    kind = _check_kind(kind)
    real = _logits("real_logits", real_logits)
    fake = _logits("fake_logits", fake_logits)
    _validate.check_same_device("fake_logits", fake, "real_logits", real)
    if kind in ("ns", "minimax"):
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wgan":
        return fake.mean() - real.mean()
    if kind == "lsgan":
        return 0.5 * (real - 1).square().mean() + 0.5 * fake.square().mean()
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str = "ns") -> torch.Tensor:
    """The generator's adversarial loss, to be minimised by G.

    Args:
        fake_logits: D(G(z)), raw logits of any shape, float32 / float16 / bfloat16 / float64.
        kind: one of :data:`LOSS_KINDS`: "ns" softplus(-f), "minimax" -softplus(f) (that is
            log(1 - D(G(z)))), "wgan" and "hinge" -f, "lsgan" (f - 1)^2 / 2; means over all elements.

    Returns a 0-d float32 tensor (float64 for float64 input), differentiable with respect to
    fake_logits, hence to G's parameters through D.
    """
    return _generator_loss(_logits("fake_logits", fake_logits), _check_kind(kind))


def _generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ns":
        return F.softplus(-fake).mean()
    if kind == "minimax":
        return -F.softplus(fake).mean()
    if kind == "lsgan":
        return 0.5 * (fake - 1).square().mean()
    return -fake.mean()


def adversarial_reconstruction_loss(discriminator: Callable[[torch.Tensor], torch.Tensor],
                                    reconstruction: torch.Tensor, kind: str = "ns") -> torch.Tensor:
    """The generator-side adversarial term on an autoencoder's reconstruction (VAE-GAN).

    Larsen et al. 2016 ("Autoencoding beyond pixels using a learned similarity metric") train the
    decoder of a VAE as the generator of a GAN whose discriminator sees reconstructions. This is
    that term, ``generator_loss(discriminator(reconstruction), kind)``, so that any autoencoder or
    generator adds it to its own loss: ``loss = recon + kl + weight * adversarial_reconstruction_loss(D, x_hat)``.

    Args:
        discriminator: a callable (an nn.Module) mapping (B, ...) samples to logits of any shape.
        reconstruction: the decoder's output (B, ...), floating, with its graph to the autoencoder.
        kind: one of :data:`LOSS_KINDS`.

    Returns a 0-d float32 tensor (float64 for float64 logits). Its gradient reaches the
    reconstruction and also the discriminator's parameters: step only the autoencoder's optimizer
    with it, and zero D's gradients before D's own step (or freeze D with ``requires_grad_(False)``).
    """
    kind = _check_kind(kind)
    if not callable(discriminator):
        raise TypeError(f"discriminator must be callable (an nn.Module), got {type(discriminator).__name__}")
    reconstruction = _validate.check_floating("reconstruction", reconstruction)
    return _generator_loss(_logits("discriminator(reconstruction)", discriminator(reconstruction)), kind)
