"""VQ-VAE (van den Oord et al. 2017) and the two-level VQ-VAE-2 (Razavi et al. 2019).

    VQVAE   x -> encoder -> z_e (B, D, H / 2^down, W / 2^down) -> VectorQuantizer -> decoder -> x_hat
    VQVAE2  bottom encoder x -> h_b (H/2^down); top encoder h_b -> h_t (half of that) -> top codes q_t;
            the bottom codes quantise [h_b, decoder_t(q_t)]; the decoder reads [upsample(q_t), q_b].

The loss of a batch is ``mse(x_hat, x) + vq loss`` (summed over both levels for VQ-VAE-2); the
models return it with the reconstruction and code statistics. Images are sampled, not only
reconstructed, through a :class:`fastgen.models.pixelcnn.GatedPixelCNN` prior over the codes
(for VQ-VAE-2 one over the top codes and one over the bottom codes conditioned on the top ones):
``model.sample(prior, n, ...)``. Encoder and decoder follow the papers: stride-2 4x4 convolutions,
residual blocks ReLU-conv3x3-ReLU-conv1x1 with a skip, transposed 4x4 convolutions back up.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _validate
from ..nn.vector_quantizer import VectorQuantizer
from .pixelcnn import GatedPixelCNN


class VQVAEOutput(NamedTuple):
    """reconstruction: x's shape; loss: float32 scalar (mse + vq); mse, vq_loss: its terms;
    indices: the code map(s), (B, h, w) int64 (a (top, bottom) pair for VQ-VAE-2);
    perplexity, usage: float32 scalars (tuples of two for VQ-VAE-2)."""

    reconstruction: torch.Tensor
    loss: torch.Tensor
    mse: torch.Tensor
    vq_loss: torch.Tensor
    indices: object
    perplexity: object
    usage: object


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, 1))

    def forward(self, x):
        return x + self.body(x)


def encoder(in_channels: int, hidden: int, down: int, res_blocks: int) -> nn.Sequential:
    """(B, in, H, W) -> (B, hidden, H / 2^down, W / 2^down), ending in a ReLU."""
    layers = []
    for i in range(down):
        layers += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 4, stride=2, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(hidden if down else in_channels, hidden, 3, padding=1))
    layers += [ResidualBlock(hidden, max(1, hidden // 2)) for _ in range(res_blocks)]
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def decoder(in_channels: int, out_channels: int, hidden: int, up: int, res_blocks: int) -> nn.Sequential:
    """(B, in, h, w) -> (B, out, h * 2^up, w * 2^up)."""
    layers = [nn.Conv2d(in_channels, hidden, 3, padding=1)]
    layers += [ResidualBlock(hidden, max(1, hidden // 2)) for _ in range(res_blocks)]
    layers.append(nn.ReLU())
    for i in range(up):
        last = i == up - 1
        layers.append(nn.ConvTranspose2d(hidden, out_channels if last else hidden, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    if up == 0:
        layers.append(nn.Conv2d(hidden, out_channels, 1))
    return nn.Sequential(*layers)


def _check_images(x: object, channels: int, multiple: int) -> torch.Tensor:
    x = _validate.check_floating("x", x, min_dim=4)
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x must be (B, {channels}, H, W), got shape {tuple(x.shape)}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"x's height and width must be multiples of {multiple}, got {tuple(x.shape[2:])}")
    return x


class VQVAE(nn.Module):
    """One-level VQ-VAE.

    Args:
        in_channels: image channels.
        hidden: channels of encoder and decoder.
        num_codes, code_dim: codebook size K and code size D.
        down: stride-2 stages (codes at H / 2^down).
        res_blocks: residual blocks in the encoder and in the decoder.
        **vq: passed to :class:`fastgen.nn.VectorQuantizer` (beta, ema, decay, kmeans_init,
            restart_after, cosine, legacy, impl).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, num_codes: int = 64, code_dim: int = 16, down: int = 1,
                 res_blocks: int = 2, **vq):
        super().__init__()
        self.in_channels, self.down = _validate.check_int("in_channels", in_channels, 1), _validate.check_int("down", down, 0)
        self.encoder = nn.Sequential(encoder(in_channels, hidden, down, res_blocks), nn.Conv2d(hidden, code_dim, 1))
        self.quantizer = VectorQuantizer(num_codes, code_dim, **vq)
        self.decoder = decoder(code_dim, in_channels, hidden, down, res_blocks)

    def code_shape(self, height: int, width: int) -> tuple[int, int]:
        return height >> self.down, width >> self.down

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        """x (B, C, H, W) float, H and W multiples of 2^down."""
        x = _check_images(x, self.in_channels, 1 << self.down)
        q = self.quantizer(self.encoder(x))
        rec = self.decoder(q.quantized)
        mse = F.mse_loss(rec.float(), x.float())
        return VQVAEOutput(rec, mse + q.loss, mse, q.loss, q.indices, q.perplexity, q.usage)

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Images from int64 code maps (B, h, w)."""
        return self.decoder(self.quantizer.lookup(indices))

    @torch.no_grad()
    def sample(self, prior: GatedPixelCNN, n: int, image_size: tuple[int, int], *, generator=None,
               temperature: float = 1.0) -> torch.Tensor:
        """``n`` images (n, C, H, W): codes from ``prior`` in raster order, then the decoder."""
        return self.decode_codes(prior.sample(n, self.code_shape(*image_size), generator=generator,
                                              temperature=temperature))


class VQVAE2(nn.Module):
    """Two-level VQ-VAE-2: top codes at H / 2^(down+1), bottom codes at H / 2^down.

    Args as :class:`VQVAE`; ``num_codes`` and ``code_dim`` serve both levels.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, num_codes: int = 64, code_dim: int = 16, down: int = 1,
                 res_blocks: int = 2, **vq):
        super().__init__()
        self.in_channels, self.down = _validate.check_int("in_channels", in_channels, 1), _validate.check_int("down", down, 0)
        self.code_dim = code_dim
        self.encoder_b = encoder(in_channels, hidden, down, res_blocks)
        self.encoder_t = encoder(hidden, hidden, 1, res_blocks)
        self.pre_t = nn.Conv2d(hidden, code_dim, 1)
        self.quantizer_t = VectorQuantizer(num_codes, code_dim, **vq)
        self.decoder_t = decoder(code_dim, code_dim, hidden, 1, res_blocks)
        self.pre_b = nn.Conv2d(hidden + code_dim, code_dim, 1)
        self.quantizer_b = VectorQuantizer(num_codes, code_dim, **vq)
        self.upsample_t = nn.ConvTranspose2d(code_dim, code_dim, 4, stride=2, padding=1)
        self.decoder = decoder(2 * code_dim, in_channels, hidden, down, res_blocks)

    def code_shapes(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top h, w), (bottom h, w))."""
        return (height >> (self.down + 1), width >> (self.down + 1)), (height >> self.down, width >> self.down)

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        """x (B, C, H, W) float, H and W multiples of 2^(down+1)."""
        x = _check_images(x, self.in_channels, 1 << (self.down + 1))
        h_b = self.encoder_b(x)
        q_t = self.quantizer_t(self.pre_t(self.encoder_t(h_b)))
        q_b = self.quantizer_b(self.pre_b(torch.cat([h_b, self.decoder_t(q_t.quantized)], dim=1)))
        rec = self._decode(q_t.quantized, q_b.quantized)
        mse = F.mse_loss(rec.float(), x.float())
        vq_loss = q_t.loss + q_b.loss
        return VQVAEOutput(rec, mse + vq_loss, mse, vq_loss, (q_t.indices, q_b.indices),
                           (q_t.perplexity, q_b.perplexity), (q_t.usage, q_b.usage))

    def _decode(self, quant_t: torch.Tensor, quant_b: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([self.upsample_t(quant_t), quant_b], dim=1))

    def decode_codes(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """Images from int64 code maps top (B, h/2, w/2) and bottom (B, h, w)."""
        return self._decode(self.quantizer_t.lookup(top), self.quantizer_b.lookup(bottom))

    def bottom_condition(self, top: torch.Tensor) -> torch.Tensor:
        """What the bottom prior is conditioned on: the top codes' vectors, nearest-upsampled to the
        bottom map, (B, code_dim, h, w)."""
        return F.interpolate(self.quantizer_t.lookup(top), scale_factor=2, mode="nearest")

    @torch.no_grad()
    def sample(self, top_prior: GatedPixelCNN, bottom_prior: GatedPixelCNN, n: int, image_size: tuple[int, int], *,
               generator=None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images: top codes from ``top_prior``, bottom codes from ``bottom_prior`` given them."""
        top_shape, bottom_shape = self.code_shapes(*image_size)
        top = top_prior.sample(n, top_shape, generator=generator, temperature=temperature)
        bottom = bottom_prior.sample(n, bottom_shape, self.bottom_condition(top), generator=generator,
                                     temperature=temperature)
        return self.decode_codes(top, bottom)
