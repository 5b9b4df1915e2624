"""Convolutional encoders and decoders, and the deterministic autoencoder built from them.

    ConvEncoder(in_channels, image_size, out_features, channels)     (B, C, S, S) -> (B, out_features)
    ConvDecoder(latent_dim, out_channels, image_size, channels)      (B, latent_dim) -> (B, out_channels, S, S)
    Autoencoder(encoder, decoder, likelihood)                         loss = -log p(x | z = encoder(x))
    Autoencoder.digits(), Autoencoder.rgb32()                         presets for 8x8x1 and 32x32x3 images

Each stage of the encoder halves the image (a 4x4 convolution with stride 2, then SiLU); the
decoder mirrors it with 4x4 transposed convolutions. Plain torch layers: at these sizes no fused
kernel of fastgen would pay (the convolutions are cuDNN's / oneDNN's either way).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import _check_images, _positive_int
from .likelihoods import make_likelihood

__all__ = ["ConvEncoder", "ConvDecoder", "Autoencoder", "PRESETS"]

# Stage widths per preset: small enough for a CPU (digits) and the usual DCGAN-like widths (32x32 RGB).
PRESETS = {
    "digits": dict(in_channels=1, image_size=8, channels=(32, 64)),
    "rgb32": dict(in_channels=3, image_size=32, channels=(64, 128, 256)),
}


def _check_channels(channels: object, image_size: int) -> tuple[int, ...]:
    if not isinstance(channels, (tuple, list)) or not channels:
        raise ValueError(f"channels must be a non-empty tuple of ints (one per halving stage), got {channels!r}")
    channels = tuple(_positive_int("channels[i]", c) for c in channels)
    if image_size % (2 ** len(channels)):
        raise ValueError(f"image_size={image_size} must be divisible by 2**len(channels) = {2 ** len(channels)} "
                         f"({len(channels)} halving stages)")
    return channels


class ConvEncoder(nn.Module):
    """(B, in_channels, image_size, image_size) -> (B, out_features) floating.

    A 3x3 stem convolution to channels[0], one stride-2 4x4 convolution + SiLU per entry of
    ``channels``, then a linear map of the flattened (channels[-1], S / 2^n, S / 2^n) features.
    A VAE asks for out_features = 2 * latent_dim (means, then log-variances).
    """

    def __init__(self, in_channels: int, image_size: int, out_features: int, channels: tuple[int, ...] = (32, 64)):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.image_size = _positive_int("image_size", image_size)
        self.out_features = _positive_int("out_features", out_features)
        channels = _check_channels(channels, self.image_size)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        prev = channels[0]
        for c in channels:
            layers += [nn.Conv2d(prev, c, 4, stride=2, padding=1), nn.SiLU()]
            prev = c
        self.features = nn.Sequential(*layers)
        side = self.image_size // 2 ** len(channels)
        self.head = nn.Linear(prev * side * side, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_images(x, self.in_channels, self.image_size)
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """(B, latent_dim) -> (B, out_channels, image_size, image_size) floating: the mirror of :class:`ConvEncoder`.

    A linear map to (channels[0], S / 2^n, S / 2^n), one 4x4 transposed convolution with stride 2
    (after SiLU) per entry of ``channels``, then a 3x3 convolution to ``out_channels`` raw outputs
    (a likelihood's parameters: likelihood.params_per_channel * image channels).
    """

    def __init__(self, latent_dim: int, out_channels: int, image_size: int, channels: tuple[int, ...] = (64, 32)):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.image_size = _positive_int("image_size", image_size)
        channels = _check_channels(channels, self.image_size)
        self._side = self.image_size // 2 ** len(channels)
        self._first = channels[0]
        self.head = nn.Linear(self.latent_dim, channels[0] * self._side * self._side)
        layers: list[nn.Module] = []
        prev = channels[0]
        for c in channels:
            layers += [nn.SiLU(), nn.ConvTranspose2d(prev, c, 4, stride=2, padding=1)]
            prev = c
        layers += [nn.SiLU(), nn.Conv2d(prev, self.out_channels, 3, padding=1)]
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.dtype.is_floating_point or z.dim() != 2 \
                or z.shape[1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a floating tensor of shape (B, {self.latent_dim}), got {got}")
        h = self.head(z).view(z.shape[0], self._first, self._side, self._side)
        return self.features(h)


def _preset(name: str, latent_dim: int, out_features: int, params_per_channel: int):
    """(encoder, decoder) of a preset in :data:`PRESETS`."""
    spec = PRESETS[name]
    encoder = ConvEncoder(spec["in_channels"], spec["image_size"], out_features, spec["channels"])
    decoder = ConvDecoder(latent_dim, params_per_channel * spec["in_channels"], spec["image_size"],
                          tuple(reversed(spec["channels"])))
    return encoder, decoder


class Autoencoder(nn.Module):
    """A deterministic autoencoder: z = encoder(x), loss = -log p(x | decoder(z)) per example.

    Args:
        encoder: (B, C, H, W) -> (B, latent_dim).
        decoder: (B, latent_dim) -> the likelihood's parameters (B, params_per_channel * C, H, W).
        likelihood: a :mod:`fastgen.models.likelihoods` object or name ("gaussian": unit variance,
            i.e. half the squared error plus a constant).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood="gaussian"):
        super().__init__()
        for name, m in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = make_likelihood(likelihood)

    @classmethod
    def digits(cls, latent_dim: int = 16, likelihood="gaussian") -> "Autoencoder":
        """For the 8x8x1 digits of :mod:`fastgen.data.digits` (x in the likelihood's range)."""
        lik = make_likelihood(likelihood)
        return cls(*_preset("digits", latent_dim, latent_dim, lik.params_per_channel), lik)

    @classmethod
    def rgb32(cls, latent_dim: int = 128, likelihood="gaussian") -> "Autoencoder":
        """For 32x32 RGB images (CIFAR-10-sized)."""
        lik = make_likelihood(likelihood)
        return cls(*_preset("rgb32", latent_dim, latent_dim, lik.params_per_channel), lik)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters for latents z."""
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean at decoder(encoder(x)), shaped like x."""
        return self.likelihood.mean(self.decode(self.encode(x)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"loss": mean over the batch of -log p(x | z) (0-d), "nll": per example (B,) nats,
        "reconstruction": the likelihood's mean, shaped like x}."""
        params = self.decode(self.encode(x))
        nll = -self.likelihood.log_prob(params, x)
        return {"loss": nll.mean(), "nll": nll, "reconstruction": self.likelihood.mean(params)}
