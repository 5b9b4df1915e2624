"""RealNVP (Dinh et al. 2017): multi-scale affine couplings with checkerboard and channel masks."""
from __future__ import annotations

import torch.nn as nn

from ..._validate import check_int
from .actnorm import ActNorm
from .coupling import AffineCoupling
from .multiscale import MultiScaleFlow, Squeeze

__all__ = ["RealNVP"]


class RealNVP(MultiScaleFlow):
    """RealNVP: each level but the last is ``depth`` checkerboard couplings (alternating masks), a squeeze,
    ``depth`` channel couplings (alternating halves) and a split of half the channels; the last level is
    ``depth`` checkerboard couplings (the paper: 3, 3 and 4). Each coupling is followed by an ActNorm.

    Departures from the paper: ActNorm (per-channel affine, data-initialised) where the paper uses batch
    normalisation as a flow layer, so log_prob does not depend on the batch; the coupling networks are
    Glow's small conv nets (3x3, 1x1, zero-initialised 3x3) instead of residual networks; the scale is the
    paper's exp(scale_c * tanh(h)) by default (see :class:`AffineCoupling`).

    Args:
        in_channels: C of the images.
        levels: number of scales, >= 1; H and W must be divisible by 2**(levels - 1), and the last level
            needs at least 2 pixels for its checkerboard.
        depth: couplings per mask type per level, >= 1.
        hidden: width of the coupling networks, >= 1.
        image_size: None, an int or (H, W): needed by :meth:`sample`.
        scale: "tanh" (RealNVP's, the default) or "sigmoid" (Glow's).

    The API is :class:`MultiScaleFlow`'s (see :class:`Glow`).
    """

    def __init__(self, in_channels: int, levels: int, depth: int, hidden: int, *, image_size=None,
                 scale: str = "tanh"):
        super().__init__()
        self._init_sizes(in_channels, levels, image_size)
        depth = check_int("depth", depth, 1)
        hidden = check_int("hidden", hidden, 1)
        self.level_squeezes = [1] * (self.num_levels - 1) + [0]
        self.levels = nn.ModuleList()
        channels = self.in_channels
        for level in range(self.num_levels):
            layers = []
            for k in range(depth):
                layers += [AffineCoupling(channels, hidden, mask="checkerboard", flip=k % 2 == 1, scale=scale),
                           ActNorm(channels)]
            if level < self.num_levels - 1:
                layers.append(Squeeze())
                channels *= 4
                for k in range(depth):
                    layers += [AffineCoupling(channels, hidden, mask="channel", flip=k % 2 == 1, scale=scale),
                               ActNorm(channels)]
                channels //= 2
            self.levels.append(nn.ModuleList(layers))

    def _check_spatial(self, name: str, height: int, width: int) -> None:
        super()._check_spatial(name, height, width)
        factor = 2 ** self.total_squeezes
        if (height // factor) * (width // factor) < 2:
            raise ValueError(f"{name} has spatial size {height}x{width}: after levels={self.num_levels} the last level's "
                             f"checkerboard gets {height // factor}x{width // factor}, it needs at least 2 pixels")
