"""BigGAN's discriminator: residual down-blocks, self-attention at one resolution, spectral norm and the
projection of Miyato & Koyama 2018 ("cGANs with projection discriminator")."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...gan.regularizers import apply_spectral_norm
from .._common import _positive_int
from .generator import check_attention, check_resolution, orthogonal_init_
from .layers import SelfAttention

__all__ = ["BigGANDiscriminator"]


class DBlock(nn.Module):
    """x (B, in, H, W) -> (B, out, H/2, W/2) (or H, W without downsampling):
    pool(conv3x3(relu(conv3x3(a(x))))) + shortcut(x), a = relu except on the first block (which sees
    images), pool = 2x2 average; the shortcut is a 1x1 conv where the shape changes, applied after the
    pool on the first block and before it otherwise (BigGAN-PyTorch's order)."""

    def __init__(self, in_channels: int, out_channels: int, *, downsample: bool, preactivation: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels or downsample else None
        self.downsample, self.preactivation = downsample, preactivation

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        if self.skip is None:
            return h + x
        return h + (self._pool(self.skip(x)) if self.preactivation else self.skip(self._pool(x)))


class BigGANDiscriminator(nn.Module):
    """images (B, img_channels, R, R), c (B, c_dim) one-hot -> logits (B,).

    Down-blocks double the channels from ``ch`` and halve the size down to 4x4, then one block at 4x4
    without downsampling; self-attention follows the block that reaches ``attention_resolution``.
    The output is the projection discriminator's

        D(x, c) = psi(h) + <V^T c, h>,    h = sum over pixels of relu(features) (B, F),

    psi a linear layer F -> 1 and V (c_dim, F) the class embedding (stored as a bias-free linear map
    c -> V^T c). Every conv and linear layer is spectrally normalised after an orthogonal init.
    No batch norm (BigGAN's D has none), so gradient penalties work too.

    Args: img_resolution (power of two >= 8), img_channels, c_dim (>= 1), ch (BigGAN's ``D_ch``),
    attention_resolution (None or a resolution in [4, R], after the block that outputs it).
    """

    def __init__(self, img_resolution: int = 32, img_channels: int = 3, *, c_dim: int, ch: int = 32,
                 attention_resolution: int | None = 16):
        super().__init__()
        self.img_resolution = check_resolution(img_resolution)
        self.img_channels = _positive_int("img_channels", img_channels)
        self.c_dim = _positive_int("c_dim", c_dim)
        ch = _positive_int("ch", ch)
        self.attention_resolution = check_attention(attention_resolution, self.img_resolution // 2, 4)
        num_down = self.img_resolution.bit_length() - 3  # R -> 4
        widths = [self.img_channels] + [ch * 2 ** i for i in range(num_down + 1)]
        self.blocks = nn.ModuleList(
            DBlock(a, b, downsample=i < num_down, preactivation=i > 0)
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        outputs = [self.img_resolution // 2 ** (i + 1) for i in range(num_down)] + [4]
        self.attention = nn.ModuleDict({str(i): SelfAttention(widths[i + 1]) for i, r in enumerate(outputs)
                                        if r == self.attention_resolution and i < num_down})
        self.features_dim = widths[-1]
        self.linear = nn.Linear(self.features_dim, 1)
        self.embed = nn.Linear(self.c_dim, self.features_dim, bias=False)
        orthogonal_init_(self)
        apply_spectral_norm(self)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """h (B, F): the pooled features the output layers project."""
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1:] != (
                self.img_channels, self.img_resolution, self.img_resolution):
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"img must have shape (B, {self.img_channels}, {self.img_resolution}, "
                             f"{self.img_resolution}) (the generator's output), got {got}")
        h = img
        for i, block in enumerate(self.blocks):
            h = block(h)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return F.relu(h).sum(dim=[2, 3])

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.features(img)
        if not isinstance(c, torch.Tensor) or c.shape != (img.shape[0], self.c_dim):
            raise ValueError(f"c must be one-hot classes of shape ({img.shape[0]}, {self.c_dim}), got "
                             f"{tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__}")
        return self.linear(h).squeeze(1) + (self.embed(c.to(h.dtype)) * h).sum(dim=1)
