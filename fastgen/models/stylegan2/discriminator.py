"""StyleGAN2's residual discriminator with minibatch standard deviation and, for class-conditional
training, the projection of Miyato & Koyama 2018 (StyleGAN2-ADA's conditioning)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._common import _positive_int
from .generator import MappingNetwork, _check_resolution, channels_at
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStd

__all__ = ["StyleGAN2Discriminator"]


class DiscriminatorBlock(nn.Module):
    """Residual block at one resolution: conv 3x3, conv 3x3 with 2x downsampling, plus a 1x1
    downsampling skip; both paths scaled by sqrt(1/2) so the sum keeps the variance."""

    def __init__(self, in_channels: int, out_channels: int, conv_clamp: float | None):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x, gain=math.sqrt(0.5))
        return self.conv1(self.conv0(x), gain=math.sqrt(0.5)) + y


class StyleGAN2Discriminator(nn.Module):
    """images (B, img_channels, R, R) [, c (B, c_dim)] -> logits (B,).

    FromRGB (1x1 lrelu) at R, residual blocks down to 4x4, then the epilogue: minibatch std,
    conv 3x3, a fully connected layer and the output layer. Conditional (c_dim > 0): the output
    layer gives a cmap_dim vector projected onto an embedding of c (a mapping network of its own),
    scaled by 1 / sqrt(cmap_dim).

    Args: img_resolution (power of two >= 4), img_channels, c_dim, channel_base, channel_max
    (channels at resolution r: min(channel_base / r, channel_max)), mbstd_group_size,
    mbstd_num_channels, conv_clamp (as the generator's), cmap_dim (None: the 4x4 channel count).
    """

    def __init__(self, img_resolution: int = 1024, img_channels: int = 3, *, c_dim: int = 0,
                 channel_base: int = 32768, channel_max: int = 512, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = None, cmap_dim: int | None = None):
        super().__init__()
        self.img_resolution = _check_resolution(img_resolution)
        self.img_channels = _positive_int("img_channels", img_channels)
        self.c_dim = c_dim
        ch = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        self.fromrgb = EqualizedConv2d(img_channels, ch(self.img_resolution), 1, activation="lrelu",
                                       conv_clamp=conv_clamp)
        resolutions = [2 ** i for i in range(int(math.log2(self.img_resolution)), 2, -1)]
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch(r), ch(r // 2), conv_clamp) for r in resolutions)
        c4 = ch(4)
        if mbstd_num_channels < 1 or c4 % mbstd_num_channels:
            raise ValueError(f"mbstd_num_channels must be >= 1 and divide the 4x4 channels {c4}, got {mbstd_num_channels}")
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels)
        self.conv = EqualizedConv2d(c4 + mbstd_num_channels, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = EqualizedLinear(c4 * 16, c4, activation="lrelu")
        self.cmap_dim = (cmap_dim or c4) if c_dim else 1
        self.out = EqualizedLinear(c4, self.cmap_dim)
        self.mapping = MappingNetwork(0, self.cmap_dim, 1, c_dim=c_dim, lr_multiplier=1.0) if c_dim else None

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1:] != (
                self.img_channels, self.img_resolution, self.img_resolution):
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"img must have shape (B, {self.img_channels}, {self.img_resolution}, "
                             f"{self.img_resolution}), got {got}")
        x = self.fromrgb(img)
        for block in self.blocks:
            x = block(x)
        x = self.conv(self.mbstd(x))
        x = self.out(self.fc(x.flatten(1)))
        if self.mapping is None:
            return x.squeeze(1)
        if c is None:
            raise ValueError(f"c must be given: this discriminator is conditional (c_dim={self.c_dim})")
        cmap = self.mapping(torch.zeros(x.shape[0], 0, device=x.device, dtype=x.dtype), c, update_w_avg=False)[:, 0]
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
