"""DCGAN generator and discriminator (Radford et al. 2016, "Unsupervised representation learning with
deep convolutional generative adversarial networks"), for square images of any power-of-two size >= 16.

With image_size=64, base_channels=64 and the defaults these are the networks of PyTorch's reference
DCGAN example (pytorch/examples dcgan, the paper's architecture with 512 instead of 1024 channels at
4x4): 4x4 kernels, stride 2, no biases, batch norm, ReLU in G and LeakyReLU(0.2) in D, tanh output,
weights drawn from N(0, 0.02).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..gan.regularizers import apply_spectral_norm
from ._common import (NORMS, _check_floating, _check_image_size, _check_images, _check_norm, _dcgan_init_, _norm_layer,
                      _positive_int)

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "NORMS"]

class DCGANGenerator(nn.Module):
    """z -> image: a 4x4 transposed convolution from the latent, then 4x4 stride-2 upsamplings.

    Layers: ConvTranspose(latent_dim -> base * 2^(n-1), 4, stride 1) to 4x4, then n - 1 times
    ConvTranspose(4, stride 2, padding 1) halving the channels down to base, each followed by
    BatchNorm + ReLU, then ConvTranspose(base -> channels, 4, stride 2, padding 1) and tanh;
    n = log2(image_size) - 2 (4 at 64x64: 512, 256, 128, 64 channels with base 64). No biases.

    Args:
        latent_dim: size of z.
        channels: image channels (3: RGB).
        image_size: output height = width, a power of two >= 16.
        base_channels: channels of the last hidden layer (ngf in Radford et al.'s code).

    forward(z): z (B, latent_dim) or (B, latent_dim, 1, 1), floating ->
    images (B, channels, image_size, image_size) in [-1, 1], z's dtype.
    """

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, base_channels: int = 64):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        channels = _positive_int("channels", channels)
        image_size = _check_image_size(image_size)
        base_channels = _positive_int("base_channels", base_channels)
        n = int(math.log2(image_size)) - 2
        widths = [base_channels * 2 ** i for i in reversed(range(n))]
        layers = [nn.ConvTranspose2d(self.latent_dim, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]),
                  nn.ReLU()]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = _check_floating("z", z)
        if z.shape[1:] not in ((self.latent_dim,), (self.latent_dim, 1, 1)):
            raise ValueError(f"z must have shape (B, {self.latent_dim}) or (B, {self.latent_dim}, 1, 1), "
                             f"got {tuple(z.shape)}")
        return self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image -> one logit per image: 4x4 stride-2 convolutions down to 4x4, then a 4x4 convolution to 1.

    Layers: Conv(channels -> base, 4, stride 2, padding 1) + LeakyReLU(0.2), then n - 1 times
    Conv(4, stride 2, padding 1) doubling the channels, each followed by the norm and
    LeakyReLU(0.2), then Conv(base * 2^(n-1) -> 1, 4, stride 1) on the 4x4 map;
    n = log2(image_size) - 2 (64, 128, 256, 512 channels at 64x64 with base 64).

    Args:
        channels: image channels.
        image_size: input height = width, a power of two >= 16.
        base_channels: channels of the first layer (ndf in Radford et al.'s code).
        norm: "batch" (Radford et al.), "instance", "layer" or "none". Use a per-sample norm
            ("layer", "instance" or "none") for a critic with a gradient penalty (WGAN-GP, R1):
            batch norm makes each output depend on the whole batch, so the per-sample input
            gradient the penalty constrains is not defined (Gulrajani et al. 2017, section 4).
            Convolutions carry biases only with "none" (a norm's shift replaces them, and the
            standard DCGAN has none).
        spectral_norm: wrap every convolution in spectral normalization (Miyato et al. 2018),
            see :func:`fastgen.gan.regularizers.apply_spectral_norm`.

    forward(x): x (B, channels, image_size, image_size), floating -> logits (B,), x's dtype.
    """

    def __init__(self, channels: int = 3, image_size: int = 64, base_channels: int = 64, norm: str = "batch",
                 spectral_norm: bool = False):
        super().__init__()
        self.channels = _positive_int("channels", channels)
        self.image_size = _check_image_size(image_size)
        base_channels = _positive_int("base_channels", base_channels)
        norm = _check_norm(norm)
        bias = norm == "none"
        n = int(math.log2(self.image_size)) - 2
        widths = [base_channels * 2 ** i for i in range(n)]
        layers = [nn.Conv2d(self.channels, widths[0], 4, 2, 1, bias=bias), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=bias), _norm_layer(norm, c_out), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=bias)]
        self.net = nn.Sequential(*layers)
        _dcgan_init_(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_images(x, self.channels, self.image_size)
        return self.net(x).view(x.shape[0])
