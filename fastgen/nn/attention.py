"""Self-attention over the pixels of a feature map, as DDPM / improved-diffusion U-Nets use it.

All attention math goes through one function, :func:`attention`, which runs the fused op
:func:`fastgen.ops.attention.attention` (Triton flash attention on CUDA).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.attention import attention as fused_attention
from .norm import GroupNormAct

__all__ = ["attention", "SelfAttention2d"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, non-causal, no mask, no dropout.

    q, k, v: (B, heads, N, d), one floating dtype. Returns (B, heads, N, d) in that dtype.
    :func:`fastgen.ops.attention.attention` with ``impl="auto"``: the Triton flash-attention
    kernels on CUDA; on CPU ``torch.nn.functional.scaled_dot_product_attention`` where no gradient
    is needed and the float32 reference math where one is (so a gradient penalty can differentiate
    it again). The softmax is accumulated in float32 on every path (what diffusers asks for with
    ``upcast_softmax=True``).
    """
    return fused_attention(q, k, v)


class SelfAttention2d(nn.Module):
    """``(x + proj_out(attention(qkv(GroupNorm(x))))) / rescale_output_factor`` over the H*W positions.

    Args:
        channels: C, the width of q, k and v too.
        heads: number of heads (C must divide by it); ignored when ``head_dim`` is given.
        head_dim: width of one head, so ``heads = C // head_dim`` (diffusers' ``attention_head_dim``).
        groups: GroupNorm groups, or None for no normalisation.
        eps: GroupNorm eps.
        rescale_output_factor: the residual sum is divided by it (diffusers' Attention semantics;
            1 in DDPM and improved-diffusion).

    q, k and v come from one fused (C -> 3C) linear map ``qkv`` (rows: q, then k, then v; within
    each, head after head), the output from the linear ``proj_out``; both act per position, i.e. as
    1x1 convolutions. Forward: x (B, C, H, W) -> (B, C, H, W), x's dtype.
    """

    def __init__(self, channels: int, heads: int = 1, *, head_dim: int | None = None, groups: int | None = 32,
                 eps: float = 1e-6, rescale_output_factor: float = 1.0):
        super().__init__()
        if head_dim is not None:
            if head_dim < 1 or channels % head_dim != 0:
                raise ValueError(f"head_dim must be a positive divisor of channels ({channels}), got {head_dim}")
            heads = channels // head_dim
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or channels % heads != 0:
            raise ValueError(f"heads must be a positive divisor of channels ({channels}), got {heads!r}")
        self.channels = channels
        self.heads = heads
        self.rescale_output_factor = float(rescale_output_factor)
        self.norm = None if groups is None else GroupNormAct(groups, channels, eps, activation=None)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape (B, {self.channels}, H, W), got {tuple(getattr(x, 'shape', ()))}")
        b, c, h, w = x.shape
        y = x if self.norm is None else self.norm(x)
        tokens = y.reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        out = self.proj_out(out).transpose(1, 2).reshape(b, c, h, w)
        return (out + x) / self.rescale_output_factor if self.rescale_output_factor != 1.0 else out + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, rescale_output_factor={self.rescale_output_factor}"
