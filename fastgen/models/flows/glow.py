"""Glow (Kingma & Dhariwal 2018): multi-scale steps of ActNorm -> invertible 1x1 conv -> affine coupling."""
from __future__ import annotations

import torch.nn as nn

from ..._validate import check_int
from .actnorm import ActNorm
from .coupling import AffineCoupling
from .invconv import InvConv1x1
from .multiscale import MultiScaleFlow, Squeeze

__all__ = ["Glow"]


class Glow(MultiScaleFlow):
    """Glow: ``levels`` levels, each a squeeze (C -> 4C, H -> H/2) then ``depth`` steps of ActNorm,
    LU-decomposed invertible 1x1 convolution and channel-mask affine coupling, then (all but the last
    level) a split that factors out half the channels. Standard normal prior on every latent.

    Departures from the paper, kept simple: no learned prior (Glow's split layers predict a Gaussian for
    the factored half, its top prior is learned); the coupling scale is sigmoid(h + 2) / sigmoid(2) so
    each coupling starts as the identity (see :class:`AffineCoupling`); the coupling network has no
    ActNorm inside.

    Args:
        in_channels: C of the images.
        levels: number of scales, >= 1; H and W must be divisible by 2**levels (by 1 with squeeze=False).
        depth: flow steps per level, >= 1.
        hidden: width of the coupling networks, >= 1.
        image_size: None, an int or (H, W): needed by :meth:`sample` (and checked by the others when given).
        squeeze: False skips the squeezes, for inputs without space to fold, such as 2-D points viewed as
            (B, 2, 1, 1); then every level needs >= 2 channels to couple.
        scale: the coupling scale, "sigmoid" (Glow's, the default) or "tanh" (RealNVP's).

    API (:class:`MultiScaleFlow`): ``to_latent(x)`` -> z (B, C*H*W), ``from_latent(z)`` -> x, ``log_prob(x)`` ->
    (B,) nats, ``bits_per_dim(x_int, num_levels=256)``, ``sample(n, generator=, temperature=)``.
    Images are modelled in [-0.5, 0.5) (:func:`dequantize`).
    """

    def __init__(self, in_channels: int, levels: int, depth: int, hidden: int, *, image_size=None,
                 squeeze: bool = True, scale: str = "sigmoid"):
        super().__init__()
        self._init_sizes(in_channels, levels, image_size)
        depth = check_int("depth", depth, 1)
        hidden = check_int("hidden", hidden, 1)
        self.level_squeezes = [1 if squeeze else 0] * self.num_levels
        self.levels = nn.ModuleList()
        channels = self.in_channels
        for level in range(self.num_levels):
            layers = []
            if squeeze:
                layers.append(Squeeze())
                channels *= 4
            if channels < 2:
                raise ValueError(f"level {level} of Glow gets {channels} channel(s) but a coupling needs >= 2: "
                                 f"use squeeze=True, more in_channels or fewer levels")
            for _ in range(depth):
                layers += [ActNorm(channels), InvConv1x1(channels), AffineCoupling(channels, hidden, scale=scale)]
            self.levels.append(nn.ModuleList(layers))
            channels //= 2
