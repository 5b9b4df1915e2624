"""StyleGAN2's generator: the mapping network z -> w, the skip-architecture synthesis network
w -> image, style mixing, truncation and the path-length regulariser (Karras et al. 2020)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...ops.bias_act import bias_act
from .._common import _positive_int
from .layers import EqualizedLinear, ModulatedConv2d, normalize_2nd_moment, resample_filter, upsample2x

__all__ = ["MappingNetwork", "SynthesisNetwork", "StyleGAN2Generator", "channels_at"]


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN2's channel count at a resolution: min(channel_base / resolution, channel_max)."""
    return max(1, min(channel_base // resolution, channel_max))


def _check_resolution(resolution: object) -> int:
    resolution = _positive_int("img_resolution", resolution)
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4, got {resolution}")
    return resolution


class MappingNetwork(nn.Module):
    """z (B, z_dim) [, c (B, c_dim)] -> w (B, num_ws, w_dim): normalised z (and embedded, normalised
    c) through ``num_layers`` lrelu layers at lr_multiplier 0.01, broadcast to every layer's style.

    ``w_avg`` tracks the mean w during training (decay ``w_avg_beta``); truncation moves w towards
    it: w_avg + psi * (w - w_avg) for the first ``truncation_cutoff`` styles (all when None).
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, *, c_dim: int = 0, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        self.embed = EqualizedLinear(c_dim, w_dim) if c_dim else None
        features = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(EqualizedLinear(a, b, activation="lrelu", lr_multiplier=lr_multiplier)
                                    for a, b in zip(features[:-1], features[1:]))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, *, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool | None = None) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.c_dim:
            if c is None:
                raise ValueError(f"c must be given: this mapping network is conditional (c_dim={self.c_dim})")
            x = torch.cat([x, normalize_2nd_moment(self.embed(c.to(x.dtype)))], dim=1)
        for layer in self.layers:
            x = layer(x)
        if self.training if update_w_avg is None else update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.to(ws.dtype).lerp(ws[:, :cutoff], truncation_psi)
        return ws


class SynthesisBlock(nn.Module):
    """One resolution: (2x upsampling) conv0, conv1 with noise, and ToRGB added to the upsampled image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int, *,
                 conv_clamp: float | None, fused: bool):
        super().__init__()
        self.first = in_channels == 0
        self.resolution, self.conv_clamp = resolution, conv_clamp
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=2, fused=fused)
            self.noise_strength0 = nn.Parameter(torch.zeros([]))
            self.bias0 = nn.Parameter(torch.zeros(out_channels))
        self.conv1 = ModulatedConv2d(out_channels, out_channels, 3, w_dim, fused=fused)
        self.noise_strength1 = nn.Parameter(torch.zeros([]))
        self.bias1 = nn.Parameter(torch.zeros(out_channels))
        self.torgb = ModulatedConv2d(out_channels, img_channels, 1, w_dim, demodulate=False, fused=fused)
        self.torgb_bias = nn.Parameter(torch.zeros(img_channels))
        self.register_buffer("resample_filter", resample_filter(), persistent=False)
        self.num_ws = 2 if self.first else 3  # conv0 (unless first), conv1, torgb

    def _layer(self, conv, strength, bias, x, w, noise_mode: str, generator) -> torch.Tensor:
        x = conv(x, w)
        if noise_mode != "none":  # per-pixel noise, one learned strength per layer
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype, generator=generator)
            x = x + noise * strength.to(x.dtype)
        return bias_act(x, bias.to(x.dtype), dim=1, act="lrelu", clamp=self.conv_clamp)

    def forward(self, x, img, ws, noise_mode: str = "random", generator=None):
        """ws (B, num_ws, w_dim) for this block; x, img: the previous block's features and image (None first)."""
        if self.first:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            w_iter = iter(ws.unbind(1))
        else:
            w_iter = iter(ws.unbind(1))
            x = self._layer(self.conv0, self.noise_strength0, self.bias0, x, next(w_iter), noise_mode, generator)
        x = self._layer(self.conv1, self.noise_strength1, self.bias1, x, next(w_iter), noise_mode, generator)
        y = bias_act(self.torgb(x, next(w_iter)), self.torgb_bias.to(x.dtype), dim=1, clamp=self.conv_clamp)
        img = y if img is None else upsample2x(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, img_channels, R, R): a 4x4 learned constant, then one
    block per resolution 8 .. R (skip architecture: each block's ToRGB is added to the upsampled image)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, *, channel_base: int = 16384,
                 channel_max: int = 512, conv_clamp: float | None = None, fused: bool = True):
        super().__init__()
        self.img_resolution = _check_resolution(img_resolution)
        self.img_channels = _positive_int("img_channels", img_channels)
        resolutions = [2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1)]
        blocks, in_ch = [], 0
        for res in resolutions:
            out_ch = channels_at(res, channel_base, channel_max)
            blocks.append(SynthesisBlock(in_ch, out_ch, w_dim, res, img_channels, conv_clamp=conv_clamp, fused=fused))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        # consecutive blocks share a w: block i's torgb w is block i + 1's conv0 w (StyleGAN2's indexing)
        self.num_ws = sum(b.num_ws for b in blocks) - (len(blocks) - 1)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", generator=None) -> torch.Tensor:
        if ws.dim() != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape (B, num_ws={self.num_ws}, w_dim), got {tuple(ws.shape)}")
        x = img = None
        start = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, start:start + block.num_ws], noise_mode, generator)
            start += block.num_ws - 1
        return img


class StyleGAN2Generator(nn.Module):
    """StyleGAN2's generator (config F's structure, any power-of-two resolution >= 4).

    Args:
        z_dim: size of z (also ``latent_dim``, which :class:`fastgen.gan.GANTrainer` reads).
        w_dim: size of w.
        img_resolution, img_channels: output (B, img_channels, R, R).
        c_dim: class-label size (one-hot or embedding input to the mapping network), 0: unconditional.
        mapping_layers: depth of the mapping network (8 in the paper).
        channel_base, channel_max: channels at resolution r are min(channel_base / r, channel_max).
        conv_clamp: clamp every layer's output to [-conv_clamp, conv_clamp] (StyleGAN2-ADA uses 256
            for its float16 layers), or None.
        style_mixing_prob: in training, the probability that a sample switches to a second z's w
            at a random layer (0.9 in the paper; a regulariser that decorrelates the layers' styles).
        fused_modconv: the grouped-convolution path of :class:`ModulatedConv2d` (False: the
            activation-scaling path; the same numbers).

    forward(z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode="random", generator=None):
    z (B, z_dim) floating -> images (B, img_channels, R, R), unbounded (about [-1, 1] after
    training on data in [-1, 1]). ``noise_mode``: "random" or "none" (deterministic images);
    ``generator``: the torch.Generator of the noise inputs (and of style mixing).
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, img_resolution: int = 1024, img_channels: int = 3, *,
                 c_dim: int = 0, mapping_layers: int = 8, channel_base: int = 32768, channel_max: int = 512,
                 conv_clamp: float | None = None, style_mixing_prob: float = 0.9, fused_modconv: bool = True,
                 pl_decay: float = 0.01):
        super().__init__()
        self.z_dim = self.latent_dim = _positive_int("z_dim", z_dim)
        self.c_dim = c_dim
        if not 0 <= style_mixing_prob <= 1:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {style_mixing_prob!r}")
        self.style_mixing_prob, self.pl_decay = float(style_mixing_prob), float(pl_decay)
        self.synthesis = SynthesisNetwork(_positive_int("w_dim", w_dim), img_resolution, img_channels,
                                          channel_base=channel_base, channel_max=channel_max, conv_clamp=conv_clamp,
                                          fused=fused_modconv)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, c_dim=c_dim, num_layers=mapping_layers)
        self.register_buffer("pl_mean", torch.zeros([]))  # the path-length regulariser's running target

    def _check_z(self, z: object) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.dtype.is_floating_point:
            raise TypeError(f"z must be a floating tensor (B, {self.z_dim}), got "
                            f"{z.dtype if isinstance(z, torch.Tensor) else type(z).__name__}")
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, z_dim={self.z_dim}), got {tuple(z.shape)}")
        return z

    def styles(self, z: torch.Tensor, c: torch.Tensor | None = None, *, truncation_psi: float = 1.0,
               truncation_cutoff: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """ws (B, num_ws, w_dim) for z, with style mixing in training mode."""
        ws = self.mapping(self._check_z(z), c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        if self.training and self.style_mixing_prob > 0:
            B = z.shape[0]
            mix = torch.rand(B, 1, device=z.device, generator=generator) < self.style_mixing_prob
            cut = torch.randint(1, self.num_ws, (B, 1), device=z.device, generator=generator)
            cut = torch.where(mix, cut, torch.full_like(cut, self.num_ws))
            z2 = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
            ws2 = self.mapping(z2, c, update_w_avg=False)
            layer = torch.arange(self.num_ws, device=z.device).unsqueeze(0)
            ws = torch.where((layer >= cut).unsqueeze(-1), ws2, ws)
        return ws

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, *, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        if noise_mode not in ("random", "none"):
            raise ValueError(f"noise_mode must be 'random' or 'none', got {noise_mode!r}")
        ws = self.styles(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, generator=generator)
        return self.synthesis(ws, noise_mode, generator)

    def path_length_penalty(self, z: torch.Tensor, c: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
        """StyleGAN2's path-length regulariser, (||J_w^T y||_2 - a)^2 averaged over the batch, with
        y ~ N(0, I) / sqrt(H W) and a the running mean of the lengths (``pl_mean``, decay
        ``pl_decay``, updated here). Differentiates the images with respect to ws and then the
        result with respect to G's parameters: a gradient of a gradient through bias_act and
        upfirdn2d. Returns a scalar; the caller weighs it (2 in the paper, times the lazy interval)."""
        ws = self.styles(z, c, generator=generator)
        img = self.synthesis(ws, "random", generator)
        y = torch.randn(img.shape, device=img.device, dtype=img.dtype, generator=generator)
        y = y / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(lengths.mean().to(self.pl_mean.dtype), self.pl_decay))
        return (lengths - self.pl_mean).square().mean()
