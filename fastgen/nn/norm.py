"""GroupNorm with its activation (and a U-Net's time-embedding add or scale-shift) as one module.

:class:`GroupNormAct` is the nn.Module face of :func:`fastgen.ops.group_norm.group_norm`: it holds
the affine parameters under the names ``weight`` and ``bias``, exactly as ``torch.nn.GroupNorm``
does, so a state dict written for one loads into the other, and :func:`fastgen.accelerate` can swap
one for the other while sharing the very same ``Parameter`` objects.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.group_norm import ACTIVATIONS, group_norm

__all__ = ["GroupNormAct"]


def _autocasts_to_float32(x: torch.Tensor) -> bool:
    """True where torch's autocast would run group_norm on ``x`` in float32: a float16 / bfloat16 x
    under CUDA autocast (torch.amp's "CUDA ops that can autocast to float32" list). CPU autocast has
    no such entry: there nn.GroupNorm keeps x's dtype."""
    return (x.device.type == "cuda" and x.dtype in (torch.float16, torch.bfloat16)
            and torch.is_autocast_enabled("cuda"))  # autocast leaves float32 / float64 inputs alone


class GroupNormAct(nn.Module):
    """``act(GroupNorm(x + emb) * weight + bias) * (1 + scale) + shift``, fused where a kernel exists.

    Args:
        num_groups: a divisor of ``num_channels``.
        num_channels: C.
        eps: added to the per-(sample, group) variance.
        activation: ``"silu"`` (applied last, after scale/shift) or None.
        affine: learnable per-channel ``weight`` (ones) and ``bias`` (zeros), as ``nn.GroupNorm``.

    Forward: ``x`` (B, C, *spatial), any floating dtype, NCHW or channels_last; optional keyword
    inputs ``emb`` (B, C) added before the statistics (diffusers' ResnetBlock2D "default" mode),
    ``scale`` and ``shift`` (B, C) applied after the affine (improved-diffusion's
    use_scale_shift_norm). Returns x's shape and memory format, in x's dtype — float32 under CUDA
    autocast, where torch's autocast runs nn.GroupNorm in float32 too.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, activation: str | None = "silu",
                 affine: bool = True):
        super().__init__()
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        if num_channels % num_groups != 0:
            raise ValueError(f"num_groups ({num_groups}) must divide num_channels ({num_channels})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = float(eps)
        self.activation = activation
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, activation: str | None = None) -> "GroupNormAct":
        """A GroupNormAct computing ``norm`` (then ``activation``), sharing its Parameter objects."""
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"norm must be a torch.nn.GroupNorm, got {type(norm).__name__}")
        new = cls(norm.num_groups, norm.num_channels, norm.eps, activation, affine=False)
        new.affine = norm.affine
        if norm.affine:
            new.weight = norm.weight  # the same Parameter: optimisers and state dicts keep working
            new.bias = norm.bias
        return new

    def _check_per_channel(self, name: str, v: torch.Tensor, x: torch.Tensor) -> None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, C), got {type(v).__name__}")
        if v.shape != (x.shape[0], self.num_channels):
            raise ValueError(f"{name} must have shape (B, C) = ({x.shape[0]}, {self.num_channels}), "
                             f"got {tuple(v.shape)}")

    def forward(self, x: torch.Tensor, *, emb: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"x must have shape (B, {self.num_channels}, ...), got {tuple(x.shape)}")
        for name, v in (("emb", emb), ("scale", scale), ("shift", shift)):
            if v is not None:
                self._check_per_channel(name, v, x)
        if _autocasts_to_float32(x):
            # torch's CUDA autocast lists group_norm among the float32 ops: nn.GroupNorm there casts
            # x, its parameters and the result to float32. Do the same, so swapping in GroupNormAct
            # (fastgen.accelerate) changes neither the numbers nor the dtype the next layer sees.
            dtype = torch.float32
        else:
            # Outside CUDA autocast (and under CPU autocast, which leaves group_norm alone) the
            # output keeps x's dtype. The op takes one dtype, so float32 parameters meet a
            # bfloat16 / float16 x rounded to it; the kernels compute in float32 either way.
            dtype = x.dtype
        x = x.to(dtype)
        weight, bias, emb, scale, shift = (None if v is None else v.to(dtype)
                                           for v in (self.weight, self.bias, emb, scale, shift))
        return group_norm(x, self.num_groups, weight, bias, self.eps, emb=emb, scale=scale, shift=shift,
                          activation=self.activation)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, activation={self.activation!r}, "
                f"affine={self.affine}")
