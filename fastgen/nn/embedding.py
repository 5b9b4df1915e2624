"""Sinusoidal timestep embeddings and the MLP a diffusion U-Net puts after them."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["timestep_embedding", "TimeEmbedding"]


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0,
                       max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, the Transformer's positional code.

    With ``half = dim // 2`` and ``f_i = exp(-ln(max_period) * i / (half - downscale_freq_shift))``,
    the output is ``[sin(t f), cos(t f)]`` (``[cos, sin]`` when ``flip_sin_to_cos``), zero-padded by
    one column when ``dim`` is odd. ``flip_sin_to_cos=True, downscale_freq_shift=0`` is
    improved-diffusion's ``timestep_embedding`` and diffusers' UNet2DModel default;
    ``False, 1`` is the original DDPM code (Ho et al. 2020) and the google/ddpm-* checkpoints.
    Computed exactly as diffusers' ``get_timestep_embedding`` so the two agree bit for bit.

    Args:
        t: (N,) timesteps, integer or floating.
        dim: embedding width, >= 2.
    Returns:
        (N, dim) float32.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (N,), got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"t must have shape (N,) (one timestep per sample), got {tuple(t.shape)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim must be an int >= 2, got {dim!r}")
    half = dim // 2
    if half - downscale_freq_shift <= 0:
        raise ValueError(f"downscale_freq_shift must be < dim // 2 = {half}, got {downscale_freq_shift}")
    # Same operation order as diffusers (exponent in float32, then exp, then the product) on purpose:
    # a different but equivalent order changes the last bits of sin(t f) for t near 1000.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """``linear_2(silu(linear_1(timestep_embedding(t))))``: (N,) timesteps -> (N, out_dim).

    The layer names are diffusers' ``TimestepEmbedding``'s, so its weights load unchanged.
    """

    def __init__(self, in_dim: int, out_dim: int, *, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0):
        super().__init__()
        self.in_dim = in_dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        e = timestep_embedding(t, self.in_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                               downscale_freq_shift=self.downscale_freq_shift)
        e = e.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(e)))
