"""ProGAN's networks (Karras et al. 2018, "Progressive growing of GANs for improved quality, stability,
and variation"): pixel norm, equalised learning rate, minibatch standard deviation, and a generator
and discriminator that grow from 4x4 with a fade-in of each new resolution.

The equalised-lr layers, the pixel norm (the 2nd-moment normalisation over channels) and the
minibatch std are StyleGAN2's (:mod:`fastgen.models.stylegan2.layers`), which inherited them from
ProGAN. One difference of form: those layers apply the activation's gain (sqrt 2 for leaky ReLU)
after the activation rather than in the weight scale; the two differ only by a rescaling of the bias
(and not at all before a pixel norm, which is scale-invariant).

Both networks hold every resolution's layers from the start; ``set_stage(resolution, alpha)`` selects
the active ones, so growing keeps the earlier weights (and the parameters of one optimizer stay
the same; layers not yet active get no gradient, so Adam leaves them untouched).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._common import _positive_int
from ..stylegan2.generator import _check_resolution, channels_at
from ..stylegan2.layers import EqualizedConv2d, EqualizedLinear, MinibatchStd, normalize_2nd_moment

__all__ = ["ProGANGenerator", "ProGANDiscriminator", "PixelNorm", "upsample_nearest"]


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + eps), per pixel (ProGAN's "pixelwise feature vector
    normalisation"); x (B, C, ...) -> same shape."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_2nd_moment(x, dim=1, eps=self.eps)


def upsample_nearest(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), each pixel repeated 2 x 2 (ProGAN's upsampling)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


class _Staged(nn.Module):
    """The current stage of a growing network: ``resolution`` (a power of two in [4, img_resolution])
    and ``alpha`` in [0, 1], the weight of the newest resolution during its fade-in."""

    def _init_stage(self, img_resolution: int) -> None:
        self.img_resolution = _check_resolution(img_resolution)
        self.resolutions = [2 ** i for i in range(2, self.img_resolution.bit_length())]
        self.resolution, self.alpha = self.img_resolution, 1.0

    def set_stage(self, resolution: int, alpha: float = 1.0) -> None:
        if resolution not in self.resolutions:
            raise ValueError(f"resolution must be one of {self.resolutions} (powers of two from 4 to img_resolution "
                             f"{self.img_resolution}), got {resolution!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        if resolution == 4 and alpha != 1:
            raise ValueError("alpha must be 1 at resolution 4: there is no lower resolution to fade from")
        self.resolution, self.alpha = resolution, float(alpha)

    @property
    def level(self) -> int:
        """Index of the current resolution in ``resolutions`` (0 for 4x4)."""
        return self.resolution.bit_length() - 3

    def extra_repr(self) -> str:
        return f"img_resolution={self.img_resolution}, stage=({self.resolution}, alpha={self.alpha})"


class GBlock(nn.Module):
    """(B, in, H, W) -> (B, out, 2H, 2W): nearest 2x, then twice conv3x3 + leaky ReLU + pixel norm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu")
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3, activation="lrelu")
        self.norm = PixelNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv1(self.norm(self.conv0(upsample_nearest(x)))))


class ProGANGenerator(_Staged):
    """z (B, latent_dim) -> images (B, img_channels, r, r) at the current stage's resolution r.

    z is pixel-normalised, mapped by a dense layer to 4x4 (+ lrelu, pixel norm), conv3x3; each
    resolution above 4 adds a :class:`GBlock`; every resolution has its own toRGB (1x1 conv, linear).
    During the fade-in of resolution r (alpha < 1) the output is
    lerp(upsample_nearest(toRGB_{r/2}(h_{r/2})), toRGB_r(block_r(h_{r/2})), alpha).
    Channels at resolution r: min(channel_base / r, channel_max). Outputs are not squashed (no tanh),
    as in ProGAN.
    """

    def __init__(self, img_resolution: int = 16, img_channels: int = 1, *, latent_dim: int = 128,
                 channel_base: int = 1024, channel_max: int = 128):
        super().__init__()
        self._init_stage(img_resolution)
        self.img_channels = _positive_int("img_channels", img_channels)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        ch = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        self.input = EqualizedLinear(self.latent_dim, ch(4) * 16, activation="lrelu")
        self.input_conv = EqualizedConv2d(ch(4), ch(4), 3, activation="lrelu")
        self.norm = PixelNorm()
        self.blocks = nn.ModuleList(GBlock(ch(r // 2), ch(r)) for r in self.resolutions[1:])
        self.torgb = nn.ModuleList(EqualizedConv2d(ch(r), self.img_channels, 1) for r in self.resolutions)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(getattr(z, 'shape', ()))}")
        h = self.input(normalize_2nd_moment(z)).view(z.shape[0], -1, 4, 4)
        h = self.norm(self.input_conv(self.norm(h)))
        level = self.level
        for block in self.blocks[:level - 1] if level > 0 else []:
            h = block(h)
        if level == 0:
            return self.torgb[0](h)
        old = None if self.alpha == 1 else upsample_nearest(self.torgb[level - 1](h))
        if self.alpha == 0:
            return old
        new = self.torgb[level](self.blocks[level - 1](h))
        return new if old is None else torch.lerp(old, new, self.alpha)


class DBlock(nn.Module):
    """(B, in, H, W) -> (B, out, H/2, W/2): conv3x3 + leaky ReLU twice, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(self.conv0(x)), 2)


class ProGANDiscriminator(_Staged):
    """images (B, img_channels, r, r) at the current stage's resolution r -> logits (B,).

    fromRGB_r (1x1 conv, lrelu), a :class:`DBlock` per resolution down to 4x4, then minibatch std
    (StyleGAN2's layer, one channel over groups of ``mbstd_group_size``), conv3x3, a dense layer and
    the output layer. During the fade-in of r the features entering the 4x4-ward blocks are
    lerp(fromRGB_{r/2}(avg_pool2x2(x)), block_r(fromRGB_r(x)), alpha). No batch norm: a gradient
    penalty works (the minibatch std makes real and fake take separate forwards).
    """

    def __init__(self, img_resolution: int = 16, img_channels: int = 1, *, channel_base: int = 1024,
                 channel_max: int = 128, mbstd_group_size: int = 4):
        super().__init__()
        self._init_stage(img_resolution)
        self.img_channels = _positive_int("img_channels", img_channels)
        ch = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        self.fromrgb = nn.ModuleList(EqualizedConv2d(self.img_channels, ch(r), 1, activation="lrelu")
                                     for r in self.resolutions)
        self.blocks = nn.ModuleList(DBlock(ch(r), ch(r // 2)) for r in self.resolutions[1:])
        self.mbstd = MinibatchStd(_positive_int("mbstd_group_size", mbstd_group_size), 1)
        self.conv = EqualizedConv2d(ch(4) + 1, ch(4), 3, activation="lrelu")
        self.fc = EqualizedLinear(ch(4) * 16, ch(4), activation="lrelu")
        self.out = EqualizedLinear(ch(4), 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1:] != (self.img_channels, r, r):
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"img must have shape (B, {self.img_channels}, {r}, {r}) (the current stage's resolution, "
                             f"the generator's output), got {got}")
        level = self.level
        if level == 0:
            h = self.fromrgb[0](img)
        else:
            old = None if self.alpha == 1 else self.fromrgb[level - 1](F.avg_pool2d(img, 2))
            if self.alpha == 0:
                h = old
            else:
                h = self.blocks[level - 1](self.fromrgb[level](img))
                h = h if old is None else torch.lerp(old, h, self.alpha)
            for block in reversed(self.blocks[:level - 1]):
                h = block(h)
        h = self.conv(self.mbstd(h))
        return self.out(self.fc(h.flatten(1))).squeeze(1)
