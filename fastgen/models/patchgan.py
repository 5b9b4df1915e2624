"""The PatchGAN discriminator of pix2pix (Isola et al. 2017, "Image-to-image translation with
conditional adversarial networks"): a fully convolutional D that classifies each overlapping patch
of the input as real or fake, and so outputs a map of logits rather than one per image.

With the default n_layers=3 each output sees a 70x70 input patch (the paper's "70x70 PatchGAN");
:func:`receptive_field` computes that size from the same layer list the module is built from.
For a conditional D (pix2pix), concatenate the condition and the image along channels and set
in_channels to the sum.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..gan.regularizers import apply_spectral_norm
from ._common import _check_images, _check_norm, _dcgan_init_, _norm_layer, _positive_int

__all__ = ["PatchGANDiscriminator", "receptive_field"]

KERNEL, PADDING = 4, 1  # every convolution of the PatchGAN is 4x4 with padding 1


def _layer_specs(in_channels: int, base_channels: int, n_layers: int) -> list[tuple[int, int, int, bool]]:
    """(in channels, out channels, stride, followed by a norm) of each 4x4 convolution, input first.

    pix2pix's NLayerDiscriminator: the channel multiplier doubles per layer and is capped at 8.
    """
    width = [base_channels * min(2 ** i, 8) for i in range(n_layers + 1)]
    specs = [(in_channels, width[0], 2, False)]
    specs += [(width[i - 1], width[i], 2, True) for i in range(1, n_layers)]
    specs += [(width[n_layers - 1], width[n_layers], 1, True), (width[n_layers], 1, 1, False)]
    return specs


def receptive_field(n_layers: int) -> int:
    """Height (= width) of the input patch that one output logit of a PatchGAN with ``n_layers`` sees.

    Walking back from one output, a k x k convolution of stride s widens the field from r to
    (r - 1) * s + k. 16 for n_layers=1, 34 for 2, 70 for 3 (pix2pix's default), 142 for 4.
    """
    n_layers = _positive_int("n_layers", n_layers)
    field = 1
    for _, _, stride, _ in reversed(_layer_specs(1, 1, n_layers)):
        field = (field - 1) * stride + KERNEL
    return field


class PatchGANDiscriminator(nn.Module):
    """image -> map of patch logits (pix2pix's NLayerDiscriminator).

    Layers (all 4x4, padding 1): Conv(in_channels -> base, stride 2) + LeakyReLU(0.2); n_layers - 1
    times Conv(stride 2) doubling the channels (capped at 8 * base) + norm + LeakyReLU(0.2); one
    Conv(stride 1) + norm + LeakyReLU(0.2); Conv(stride 1) to 1 channel. Each stride-2 layer halves
    H and W (rounding down), each stride-1 layer shrinks them by 1: a 256x256 input gives a 30x30
    map with n_layers=3. Inputs must be large enough for every layer to keep at least one pixel
    (24x24 for n_layers=3).

    Args:
        in_channels: input channels (image channels, plus the condition's for a conditional D).
        base_channels: channels of the first layer (ndf in pix2pix).
        n_layers: number of stride-2 convolutions, >= 1; sets the receptive field
            (:func:`receptive_field`: 70x70 for 3).
        norm: "batch" (pix2pix), "instance", "layer" or "none", as in
            :class:`~fastgen.models.dcgan.DCGANDiscriminator` (use a per-sample norm with a
            gradient penalty). A convolution has a bias exactly when no norm follows it.
        spectral_norm: wrap every convolution in spectral normalization (Miyato et al. 2018).

    forward(x): x (B, in_channels, H, W), floating -> logits (B, 1, H', W'), x's dtype.
    Weights are initialised as in DCGAN (N(0, 0.02)), which is also pix2pix's default.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3, norm: str = "batch",
                 spectral_norm: bool = False):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        base_channels = _positive_int("base_channels", base_channels)
        self.n_layers = _positive_int("n_layers", n_layers)
        norm = _check_norm(norm)
        specs = _layer_specs(self.in_channels, base_channels, self.n_layers)
        layers = []
        for i, (c_in, c_out, stride, normed) in enumerate(specs):
            normed = normed and norm != "none"
            layers.append(nn.Conv2d(c_in, c_out, KERNEL, stride, PADDING, bias=not normed))
            if normed:
                layers.append(_norm_layer(norm, c_out))
            if i < len(specs) - 1:
                layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)
        _dcgan_init_(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_check_images(x, self.in_channels, None))
