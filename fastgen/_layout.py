"""Memory layout: every elementwise kernel walks a tensor as flat storage, sample after sample.

That holds for any tensor that is dense (no gaps, no overlap) with the batch as its outermost
dimension in memory: contiguous NCHW, channels_last, channels_last_3d, any (B, ...) tensor.
Tensors that work together must also share strides, so element i means the same (b, c, h, w)
in each of them.
"""
from __future__ import annotations

import os

import torch

# Tests set FASTGEN_POISON_OUTPUTS=1 so an element a kernel forgets to write is NaN, not stale memory.
_POISON = os.environ.get("FASTGEN_POISON_OUTPUTS") == "1"


def new_output(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised output with ``like``'s shape and strides (NaN-filled under FASTGEN_POISON_OUTPUTS=1)."""
    out = torch.empty_like(like, dtype=dtype)
    return out.fill_(float("nan")) if _POISON else out


def is_batch_major_dense(x: torch.Tensor) -> bool:
    """Dense storage (a permutation of a contiguous tensor) whose outermost dimension is the batch."""
    if x.dim() == 0:
        return False
    dims = sorted((d for d in range(1, x.dim()) if x.shape[d] != 1), key=lambda d: x.stride(d))
    expected = 1
    for d in dims:  # innermost first: each stride must equal the product of the sizes inside it
        if x.stride(d) != expected:
            return False
        expected *= x.shape[d]
    return x.shape[0] <= 1 or x.stride(0) == expected


def batch_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if the kernels can walk it, else a contiguous copy."""
    return x if is_batch_major_dense(x) else x.contiguous()


def match_layout(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` with the strides of ``like`` (a batch-major dense tensor of the same shape)."""
    if x.stride() == like.stride() or x.numel() <= 1:
        return x
    return torch.empty_like(like, dtype=x.dtype).copy_(x)


def flat_as(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a 1-D tensor in storage order as a tensor with ``like``'s shape and strides."""
    return flat.as_strided(like.shape, like.stride())


def per_sample(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Shape a per-sample (B,) coefficient to broadcast against ``like`` (B, ...)."""
    return coef.view((-1,) + (1,) * (like.dim() - 1))
