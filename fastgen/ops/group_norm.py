"""GroupNorm with a fused prologue and epilogue, as a U-Net's ResBlock uses it.

    h = x + emb[b, c]                               optional prologue: the time-embedding add of
                                                    diffusers' ResnetBlock2D ("default" mode)
    n = (h - mean_g(h)) / sqrt(var_g(h) + eps)      statistics per (sample, group) in float32
    y = n * weight[c] + bias[c]                     optional affine
    y = y * (1 + scale[b, c]) + shift[b, c]         optional epilogue (improved-diffusion's
                                                    use_scale_shift_norm)
    y = silu(y)                                     optional activation, last

The reference below is the CPU path and the ground truth; the fused kernels are added beside it
following the op contract of DESIGN.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu")


def group_norm_ref(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *, emb: torch.Tensor | None = None,
                   scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                   activation: str | None = None) -> torch.Tensor:
    """Pure torch, float32 statistics (float64 kept), x's dtype and memory format out.

    x: (B, C, *spatial); weight, bias: (C,); emb, scale, shift: (B, C). Differentiable to any order.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    h = x.to(acc)
    if emb is not None:
        h = h + emb.to(acc).view(emb.shape + (1,) * (x.dim() - 2))
    y = F.group_norm(h, num_groups, None if weight is None else weight.to(acc),
                     None if bias is None else bias.to(acc), eps)
    if scale is not None or shift is not None:
        per_channel = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        if scale is not None:
            y = y * (1.0 + scale.to(acc).view(per_channel))
        if shift is not None:
            y = y + shift.to(acc).view(per_channel)
    if activation == "silu":
        y = F.silu(y)
    memory_format = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    return y.to(x.dtype).contiguous(memory_format=memory_format)


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, *, emb: torch.Tensor | None = None,
               scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
               activation: str | None = None, impl: str = "auto") -> torch.Tensor:
    """GroupNorm(x + emb) * weight + bias, then * (1 + scale) + shift, then the activation.

    Args:
        x: (B, C, *spatial) float32 / float16 / bfloat16 / float64, NCHW or channels_last (the
            output keeps x's memory format).
        num_groups: a divisor of C.
        weight, bias: (C,) affine parameters, or None.
        emb: (B, C) added to x before the statistics, or None.
        scale, shift: (B, C) applied after the affine, or None.
        activation: None or "silu".
        impl: "auto" or "reference" until the fused kernels land.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if impl not in ("auto", "reference"):
        raise ValueError(f"impl must be 'auto' or 'reference' for group_norm, got {impl!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (B, C, ...), got {getattr(x, 'shape', type(x).__name__)}")
    if x.shape[1] % num_groups != 0:
        raise ValueError(f"num_groups must divide the channel count {x.shape[1]}, got {num_groups}")
    return group_norm_ref(x, num_groups, weight, bias, eps, emb=emb, scale=scale, shift=shift, activation=activation)
