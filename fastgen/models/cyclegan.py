"""CycleGAN's ResNet generator (Zhu et al. 2017, "Unpaired image-to-image translation using
cycle-consistent adversarial networks", appendix 7.2; Johnson et al. 2016's architecture).

    c7s1-k   reflection pad 3, 7x7 conv to k channels, instance norm, ReLU
    d2k, d4k two 3x3 stride-2 convs (instance norm, ReLU), each halving H and W
    R4k x n  residual blocks: [reflection pad 1, 3x3 conv, IN, ReLU, reflection pad 1, 3x3 conv, IN] + x
    u2k, uk  two 3x3 stride-1/2 transposed convs (IN, ReLU), each doubling H and W
    c7s1-C   reflection pad 3, 7x7 conv to the image channels, tanh

The paper uses k = 64 with 6 blocks at 128x128 and 9 at 256x256; ``base_channels``, ``n_blocks``
and ``n_downsampling`` make it small enough for 16x16 digits on a CPU. The discriminator is the
70x70 PatchGAN of pix2pix: :class:`fastgen.models.PatchGANDiscriminator` with ``norm="instance"``
(``n_layers=2`` at 16x16). The training loop is :class:`fastgen.gan.translation.CycleGANTrainer`.

Instance norm is the paper's (and the official code's) ``InstanceNorm2d(affine=False)``: per-sample,
per-channel statistics, no running averages, so train and eval modes compute the same function.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import _check_images, _positive_int

__all__ = ["ResnetBlock", "CycleGANGenerator", "check_translation_size"]


def check_translation_size(x: torch.Tensor, n_downsampling: int, name: str = "x") -> None:
    """Raise a ValueError naming ``name`` unless (B, C, H, W) images go through ``n_downsampling``
    stride-2 halvings and back to H x W: H and W divisible by 2**n_downsampling, and the bottleneck at
    least 2 pixels (a reflection pad of 1 needs 2) and the input at least 4 (the 7x7 conv's pad of 3)."""
    factor = 2 ** n_downsampling
    h, w = x.shape[-2:]
    if h % factor or w % factor or min(h, w) // factor < 2 or min(h, w) < 4:
        raise ValueError(f"{name} must have H and W divisible by 2**n_downsampling = {factor} with at least "
                         f"{max(2 * factor, 4)} pixels per side (reflection padding), got {tuple(x.shape[-2:])}")


class ResnetBlock(nn.Module):
    """x + [pad 1, 3x3 conv, norm, ReLU, pad 1, 3x3 conv, norm](x), channels kept.

    Args:
        channels: input = output channels.
        padding: "reflect" (CycleGAN: no zero border for the convolutions to learn as an edge),
            "replicate" or "zeros" (StarGAN's blocks).
        affine: instance norm with a learnable scale and shift (StarGAN) or without (CycleGAN).

    forward(x): (B, channels, H, W), H, W >= 2 for reflection padding -> same shape and dtype.
    """

    PADDINGS = ("reflect", "replicate", "zeros")

    def __init__(self, channels: int, padding: str = "reflect", affine: bool = False):
        super().__init__()
        channels = _positive_int("channels", channels)
        if padding not in self.PADDINGS:
            raise ValueError(f"padding must be one of {self.PADDINGS}, got {padding!r}")
        # With an instance norm after it a conv's bias is cancelled by the mean; the official code
        # keeps it (use_bias = True for instance norm), and so do we, for the same parameter count.
        conv = dict(kernel_size=3, padding=1, padding_mode=padding, bias=True)
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, **conv), nn.InstanceNorm2d(channels, affine=affine), nn.ReLU(True),
            nn.Conv2d(channels, channels, **conv), nn.InstanceNorm2d(channels, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _init_normal_(module: nn.Module) -> None:
    """The official CycleGAN init ("normal", gain 0.02): conv weights ~ N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


class CycleGANGenerator(nn.Module):
    """image (B, in_channels, H, W) -> translated image (B, out_channels, H, W) in [-1, 1] (tanh).

    Args:
        in_channels, out_channels: image channels of the source and target domains.
        base_channels: k of c7s1-k (64 in the paper).
        n_blocks: residual blocks at the bottleneck (6 or 9 in the paper), >= 1.
        n_downsampling: stride-2 halvings (2 in the paper), >= 1; H and W must be divisible by
            2**n_downsampling with a bottleneck of at least 2x2 (16x16 inputs take 1, 2 or 3).

    forward(x): x floating (B, in_channels, H, W) -> (B, out_channels, H, W), x's dtype.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64, n_blocks: int = 9,
                 n_downsampling: int = 2):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        k = _positive_int("base_channels", base_channels)
        self.n_blocks = _positive_int("n_blocks", n_blocks)
        self.n_downsampling = _positive_int("n_downsampling", n_downsampling)
        layers = [nn.Conv2d(self.in_channels, k, 7, padding=3, padding_mode="reflect"), nn.InstanceNorm2d(k),
                  nn.ReLU(True)]
        for i in range(self.n_downsampling):
            c = k * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
        c = k * 2 ** self.n_downsampling
        layers += [ResnetBlock(c, "reflect") for _ in range(self.n_blocks)]
        for i in range(self.n_downsampling):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.Conv2d(k, self.out_channels, 7, padding=3, padding_mode="reflect"), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_images(x, self.in_channels, None)
        check_translation_size(x, self.n_downsampling)
        return self.net(x)
