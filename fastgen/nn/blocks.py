"""The residual block and the resamplers of a diffusion U-Net (DDPM, improved-diffusion, diffusers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import GroupNormAct

__all__ = ["ResBlock", "Downsample", "Upsample"]


class Downsample(nn.Module):
    """Halve H and W: a 3x3 stride-2 convolution, or 2x2 average pooling (``use_conv=False``).

    ``padding=1`` pads symmetrically; ``padding=0`` pads one zero row and column at the bottom
    and right only, as the original TensorFlow DDPM code (and diffusers' ``downsample_padding=0``,
    used by the google/ddpm-* checkpoints) does. x: (B, C, H, W) -> (B, out_channels, H/2, W/2).
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, use_conv: bool = True, padding: int = 1):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        if padding not in (0, 1):
            raise ValueError(f"padding must be 0 (asymmetric, as TF 'SAME') or 1, got {padding!r}")
        if not use_conv and out_channels != channels:
            raise ValueError(f"out_channels must equal channels ({channels}) without a convolution, got {out_channels}")
        self.channels, self.out_channels, self.padding = channels, out_channels, padding
        self.conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=padding) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2, 2)
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 convolution unless ``use_conv=False``.

    x: (B, C, H, W) -> (B, out_channels, 2H, 2W).
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, use_conv: bool = True):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        if not use_conv and out_channels != channels:
            raise ValueError(f"out_channels must equal channels ({channels}) without a convolution, got {out_channels}")
        self.channels, self.out_channels = channels, out_channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(nn.Module):
    """The time-conditioned residual block of DDPM U-Nets (diffusers' ``ResnetBlock2D``).

        h = conv1(resample(silu(norm1(x))))
        e = emb_proj(silu(temb))                     (C_out,) per sample, or (2 C_out,) for scale_shift
        default:      h = silu(norm2(h + e))         the add is the GroupNorm op's ``emb`` prologue
        scale_shift:  h = silu(norm2(h) * (1 + s) + b), (s, b) = e.chunk(2)  (improved-diffusion's
                      use_scale_shift_norm, Nichol & Dhariwal 2021), the op's epilogue
        out = (skip(resample(x)) + conv2(dropout(h))) / output_scale_factor

    ``skip`` is a 1x1 convolution when in_ch != out_ch, else the identity. ``up``/``down``
    resample both paths in the middle (nearest x2 / 2x2 average pool), as BigGAN-style blocks do.

    Args:
        in_ch, out_ch: channels in and out (both divisible by ``groups``).
        temb_ch: width of the embedding ``temb`` given to forward, or None for an unconditioned block.
        groups, eps: GroupNorm settings of norm1 and norm2.
        dropout: before conv2.
        scale_shift: the embedding gives a scale and a shift instead of an additive bias.
        up, down: resample inside the block (at most one).
        output_scale_factor: divides the sum (diffusers' ``output_scale_factor``; 1 in DDPM).

    Forward: x (B, in_ch, H, W), temb (B, temb_ch) -> (B, out_ch, H', W').
    """

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int | None, *, groups: int = 32, dropout: float = 0.0,
                 scale_shift: bool = False, up: bool = False, down: bool = False, eps: float = 1e-6,
                 output_scale_factor: float = 1.0):
        super().__init__()
        if up and down:
            raise ValueError("up and down cannot both be True")
        for name, ch in (("in_ch", in_ch), ("out_ch", out_ch)):
            if ch % groups != 0:
                raise ValueError(f"{name} ({ch}) must be divisible by groups ({groups})")
        if scale_shift and temb_ch is None:
            raise ValueError("scale_shift=True needs an embedding: temb_ch must not be None")
        self.in_ch, self.out_ch, self.temb_ch = in_ch, out_ch, temb_ch
        self.scale_shift = scale_shift
        self.output_scale_factor = float(output_scale_factor)
        self.norm1 = GroupNormAct(groups, in_ch, eps, activation="silu")
        self.resample = (Upsample(in_ch, use_conv=False) if up else
                         Downsample(in_ch, use_conv=False) if down else None)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = None if temb_ch is None else nn.Linear(temb_ch, (2 if scale_shift else 1) * out_ch)
        self.norm2 = GroupNormAct(groups, out_ch, eps, activation="silu")
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"x must have shape (B, {self.in_ch}, H, W), got {tuple(getattr(x, 'shape', ()))}")
        h = self.norm1(x)
        if self.resample is not None:
            x, h = self.resample(x), self.resample(h)
        h = self.conv1(h)
        if self.emb_proj is None:
            if temb is not None:
                raise ValueError("temb was given but this block was built with temb_ch=None")
            h = self.norm2(h)
        else:
            if not isinstance(temb, torch.Tensor) or temb.shape != (x.shape[0], self.temb_ch):
                raise ValueError(f"temb must be a tensor of shape (B, temb_ch) = ({x.shape[0]}, {self.temb_ch}), "
                                 f"got {tuple(temb.shape) if isinstance(temb, torch.Tensor) else type(temb).__name__}")
            e = self.emb_proj(F.silu(temb)).to(h.dtype)
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = self.norm2(h, scale=scale, shift=shift)
            else:
                h = self.norm2(h, emb=e)
        h = self.conv2(self.dropout(h))
        skip = x if self.skip is None else self.skip(x)
        out = skip + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out
