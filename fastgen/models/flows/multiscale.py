"""What Glow and RealNVP share: squeeze, the multi-scale split, the Gaussian prior, the public API
(to_latent / from_latent / log_prob / sample / bits_per_dim) and the dequantisation convention.

Data convention: a flow models continuous images in [-0.5, 0.5) (Glow's). Integer pixels x in
{0, ..., K-1} (K = ``num_levels``: 256 for 8-bit images, 17 for the digits' counts 0..16) map there by
uniform dequantisation, y = (x + u) / K - 0.5 with u ~ U[0, 1)^D (:func:`dequantize`); samples map
back with :func:`quantize`, floor((y + 0.5) K) clamped to [0, K-1].

Bits per dimension: the density of v = x + u on [0, K)^D is p_flow(y) / K^D, and by Jensen
log P(x) >= E_u[log p_flow(y)] - D log K (Theis et al. 2016; Ho et al. 2019). So
bits/dim = (-log p_flow(y) + D log K) / (D ln 2), an upper bound on the discrete model's code
length, estimated with one draw of u per image. log2(K) bits/dim is the uniform model's value.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..._validate import check_int
from ._common import check_flow_input

__all__ = ["Squeeze", "MultiScaleFlow", "dequantize", "quantize"]


class Squeeze(nn.Module):
    """Space to depth: (B, C, H, W) -> (B, 4C, H/2, W/2), channel 4c + 2i + j holding pixel (2h + i, 2w + j)
    of channel c (``F.pixel_unshuffle``, Glow's ordering); log-determinant 0. ``inverse`` is pixel_shuffle."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"squeeze needs an even height and width, got spatial size {tuple(x.shape[2:])}")
        return F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(y, 2)


def dequantize(x: torch.Tensor, num_levels: int = 256, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer pixels x in {0, ..., num_levels - 1} (any integer dtype, e.g. uint8) -> y = (x + u) / K - 0.5
    in [-0.5, 0.5), u ~ U[0, 1) drawn from ``generator`` (torch's default when None), in ``dtype``."""
    num_levels = check_int("num_levels", num_levels, 2)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of integer pixel values, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"x must hold integer pixel values in [0, {num_levels - 1}] (uint8 for 8-bit images), got "
                        f"{x.dtype}; for floats in [0, 1] pass (x * (num_levels - 1)).round().to(torch.uint8)")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_levels):
        raise ValueError(f"x must hold integer pixel values in [0, {num_levels - 1}] (num_levels={num_levels}), "
                         f"got values in [{int(x.min())}, {int(x.max())}]")
    u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    return (x.to(dtype) + u) / num_levels - 0.5


def quantize(y: torch.Tensor, num_levels: int = 256) -> torch.Tensor:
    """The inverse of :func:`dequantize` up to the noise: floor((y + 0.5) K) clamped to [0, K-1], int64."""
    num_levels = check_int("num_levels", num_levels, 2)
    return torch.floor((y + 0.5) * num_levels).clamp(0, num_levels - 1).to(torch.int64)


class MultiScaleFlow(nn.Module):
    """A multi-scale flow (Dinh et al. 2017, section 3.6): level l runs its layers, then (all but the last
    level) factors out the last ceil(C/2) channels as latents and carries on with the first C // 2.
    The prior of every latent is the standard normal (no learned prior: Glow's split layers learn a
    conditional Gaussian for the factored half, which adds a network per level; kept out for simplicity).

    Subclasses (:class:`Glow`, :class:`RealNVP`) build ``self.levels`` (a ModuleList of ModuleLists of
    layers, each with ``forward(x) -> (y, logdet (B,))`` and ``inverse(y)``) and ``self.level_squeezes``
    (how many :class:`Squeeze` layers each level holds), after calling ``_init_sizes``.
    """

    in_channels: int
    image_size: tuple[int, int] | None

    def _init_sizes(self, in_channels: int, levels: int, image_size) -> None:
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.num_levels = check_int("levels", levels, 1)
        if image_size is None:
            self.image_size = None
        else:
            size = (image_size, image_size) if isinstance(image_size, int) and not isinstance(image_size, bool) else image_size
            if not (isinstance(size, (tuple, list)) and len(size) == 2):
                raise TypeError(f"image_size must be None, an int or (height, width), got {image_size!r}")
            self.image_size = (check_int("image_size[0]", size[0], 1), check_int("image_size[1]", size[1], 1))

    # --- shapes -------------------------------------------------------------------------------------

    def _check_spatial(self, name: str, height: int, width: int) -> None:
        factor = 2 ** self.total_squeezes
        if height % factor or width % factor:
            raise ValueError(f"{name} has spatial size {height}x{width}, but levels={self.num_levels} squeeze it "
                             f"{self.total_squeezes} time(s): height and width must be divisible by {factor}")
        if self.image_size is not None and (height, width) != self.image_size:
            raise ValueError(f"{name} must be {self.image_size[0]}x{self.image_size[1]} (image_size), got {height}x{width}")

    def _check_images(self, name: str, x: object) -> torch.Tensor:
        x = check_flow_input(name, x, self.in_channels)
        self._check_spatial(name, x.shape[2], x.shape[3])
        return x

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each latent piece, in the order :meth:`to_latent` concatenates them."""
        shapes, channels = [], self.in_channels
        for level in range(self.num_levels):
            channels *= 4 ** self.level_squeezes[level]
            height //= 2 ** self.level_squeezes[level]
            width //= 2 ** self.level_squeezes[level]
            if level < self.num_levels - 1:
                out = channels - channels // 2
                shapes.append((out, height, width))
                channels -= out
        shapes.append((channels, height, width))
        return shapes

    @property
    def total_squeezes(self) -> int:
        return sum(self.level_squeezes)

    # --- the bijection ------------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (B, C, H, W) -> (latent pieces, log|det dz/dx| (B,))."""
        logdet = x.new_zeros(x.shape[0])
        pieces, h = [], x
        for i, level in enumerate(self.levels):
            for layer in level:
                h, ld = layer(h)
                logdet = logdet + ld
            if i < self.num_levels - 1:
                keep = h.shape[1] // 2
                pieces.append(h[:, keep:])
                h = h[:, :keep]
        pieces.append(h)
        return pieces, logdet

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) floating, in [-0.5, 0.5) for dequantised images -> z (B, C*H*W), the latent pieces of
        every scale flattened and concatenated (first factored out first, the last level's last)."""
        x = self._check_images("x", x)
        pieces, _ = self._encode(x)
        return torch.cat([p.flatten(1) for p in pieces], dim=1)

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C*H*W) -> x (B, C, H, W), the exact inverse of :meth:`to_latent`. H, W are ``image_size``,
        or when that is None the square that z's length implies."""
        if not isinstance(z, torch.Tensor) or not z.dtype.is_floating_point:
            raise TypeError(f"z must be a floating torch.Tensor, got {z.dtype if isinstance(z, torch.Tensor) else type(z).__name__}")
        if z.dim() != 2:
            raise ValueError(f"z must have shape (B, D) (flattened latents), got {tuple(z.shape)}")
        height, width = self._size_from_latent(z.shape[1])
        shapes = self.latent_shapes(height, width)
        chunks = torch.split(z, [c * h * w for c, h, w in shapes], dim=1)
        pieces = [chunk.reshape(z.shape[0], *shape) for chunk, shape in zip(chunks, shapes)]
        h = pieces[-1]
        for i in range(self.num_levels - 1, -1, -1):
            if i < self.num_levels - 1:
                h = torch.cat([h, pieces[i]], dim=1)
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h)
        return h

    def _size_from_latent(self, dim: int) -> tuple[int, int]:
        if self.image_size is not None:
            height, width = self.image_size
            if dim != self.in_channels * height * width:
                raise ValueError(f"z must have {self.in_channels * height * width} columns (in_channels * H * W for "
                                 f"image_size {self.image_size}), got {dim}")
            return height, width
        side = math.isqrt(dim // self.in_channels)
        if side * side * self.in_channels != dim:
            raise ValueError(f"z has {dim} columns, not in_channels * H * H for a square image; pass image_size= to the "
                             f"constructor for non-square images")
        self._check_spatial("the image z decodes to", side, side)
        return side, side

    # --- densities ----------------------------------------------------------------------------------

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, (B,): log N(z; 0, I) + log|det dz/dx| for x (B, C, H, W) (a density on the
        continuous space; see :meth:`bits_per_dim` for integer images)."""
        x = self._check_images("x", x)
        pieces, logdet = self._encode(x)
        dim = x[0].numel()
        sq = sum(p.flatten(1).square().sum(1) for p in pieces)
        return -0.5 * sq - 0.5 * dim * math.log(2 * math.pi) + logdet

    def bits_per_dim(self, x: torch.Tensor, num_levels: int = 256, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bits per dimension (B,) of integer images x (B, C, H, W) in {0, ..., num_levels - 1} (uint8 for 8-bit
        images; floats are refused: quantise [0, 1] images first), with one uniform dequantisation draw:
        (-log p(dequantize(x)) + D log K) / (D ln 2). See the module docstring."""
        y = dequantize(x, num_levels, generator=generator, dtype=self._dtype())
        dim = y[0].numel()
        return (-self.log_prob(y) + dim * math.log(num_levels)) / (dim * math.log(2))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n images (n, C, H, W) = from_latent(temperature * N(0, I)), noise from ``generator`` (torch's default
        when None), on the model's device and dtype; needs ``image_size``. Values in about [-0.5, 0.5) for a
        flow trained on dequantised images (use :func:`quantize` for pixels)."""
        n = check_int("n", n, 1)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 \
                or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if self.image_size is None:
            raise ValueError("sample needs the image size: construct the flow with image_size=(H, W) or an int")
        height, width = self.image_size
        param = next(self.parameters())
        z = torch.randn(n, self.in_channels * height * width, generator=generator, dtype=param.dtype,
                        device=param.device if generator is None else generator.device)
        return self.from_latent(z.to(param.device) * temperature)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same as :meth:`log_prob`."""
        return self.log_prob(x)
