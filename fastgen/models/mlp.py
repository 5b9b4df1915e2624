"""Fully connected generator and discriminator for low-dimensional toy data (2-D rings, grids, spirals).

Neither uses batch norm: the discriminator must treat samples independently for per-sample gradient
penalties (WGAN-GP, R1), and small toy GANs train well without it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..gan.regularizers import apply_spectral_norm
from ._common import _check_floating, _positive_int

__all__ = ["MLPGenerator", "MLPDiscriminator"]


def _mlp(in_dim: int, hidden: int, depth: int, out_dim: int, activation: Callable[[], nn.Module]) -> nn.Sequential:
    """depth hidden layers Linear + activation(), then a linear output layer."""
    layers = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), activation()]
    return nn.Sequential(*layers, nn.Linear(hidden, out_dim))


def _check_samples(name: str, x: object, dim: int) -> torch.Tensor:
    x = _check_floating(name, x)
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (B, {dim}), got {tuple(x.shape)}")
    return x


class MLPGenerator(nn.Module):
    """z -> sample: ``depth`` hidden layers of Linear(hidden) + ReLU, then a linear output (unbounded).

    Args:
        latent_dim: size of z.
        data_dim: size of a sample (2 for the plane).
        hidden: width of the hidden layers.
        depth: number of hidden layers, >= 1.

    forward(z): z (B, latent_dim), floating -> samples (B, data_dim), z's dtype.
    Both MLPs keep torch's default nn.Linear initialisation.
    """

    def __init__(self, latent_dim: int = 2, data_dim: int = 2, hidden: int = 256, depth: int = 3):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.data_dim = _positive_int("data_dim", data_dim)
        self.net = _mlp(self.latent_dim, _positive_int("hidden", hidden), _positive_int("depth", depth),
                        self.data_dim, nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(_check_samples("z", z, self.latent_dim))


class MLPDiscriminator(nn.Module):
    """sample -> logit: ``depth`` hidden layers of Linear(hidden) + LeakyReLU(0.2), then Linear(hidden, 1).

    Args:
        data_dim: size of a sample.
        hidden: width of the hidden layers.
        depth: number of hidden layers, >= 1.
        spectral_norm: wrap every Linear in spectral normalization (Miyato et al. 2018), see
            :func:`fastgen.gan.regularizers.apply_spectral_norm`.

    forward(x): x (B, data_dim), floating -> logits (B,), x's dtype. Double backward (the input
    gradient, then its gradient to the parameters) works, as gradient penalties need.
    """

    def __init__(self, data_dim: int = 2, hidden: int = 256, depth: int = 3, spectral_norm: bool = False):
        super().__init__()
        self.data_dim = _positive_int("data_dim", data_dim)
        self.net = _mlp(self.data_dim, _positive_int("hidden", hidden), _positive_int("depth", depth), 1,
                        lambda: nn.LeakyReLU(0.2))
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_check_samples("x", x, self.data_dim)).squeeze(1)
