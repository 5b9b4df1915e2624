"""What the discriminators and generators of fastgen.models share: argument checks, the choice of
normalisation layer, and the DCGAN initialisation."""
from __future__ import annotations

import torch
import torch.nn as nn

NORMS = ("batch", "instance", "layer", "none")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_norm(norm: object) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalization after a discriminator convolution. Only "batch" mixes samples.

    "layer" normalises each sample over (C, H, W) with a per-channel scale and shift: GroupNorm
    with one group, which is what Gulrajani et al. 2017 use for WGAN-GP critics and, unlike
    nn.LayerNorm, needs no fixed spatial size. "instance" normalises each sample and channel over
    (H, W), with a learnable scale and shift (so the preceding convolution needs no bias).
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _dcgan_init_(module: nn.Module) -> None:
    """Radford et al. 2016's init: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_image_size(image_size: object) -> int:
    image_size = _positive_int("image_size", image_size)
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return image_size


def _check_floating(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating tensor, got {got}")
    return x


def _check_images(x: object, channels: int, size: int | None) -> torch.Tensor:
    """x must be a floating (B, channels, H, W) tensor, with H = W = size unless size is None."""
    x = _check_floating("x", x)
    expected = f"(B, {channels}, H, W)" if size is None else f"(B, {channels}, {size}, {size})"
    if x.dim() != 4 or x.shape[1] != channels or (size is not None and tuple(x.shape[2:]) != (size, size)):
        raise ValueError(f"x must have shape {expected}, got {tuple(x.shape)}")
    return x
