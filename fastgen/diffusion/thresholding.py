"""Dynamic thresholding of x0 (Imagen, Saharia et al. 2022), as diffusers' schedulers apply it.

It needs a per-sample quantile of |x0|, which is not affine in the step's inputs, so a scheduler
with ``thresholding=True`` computes x0 and thresholds it with torch ops first (an extra pass, on
the device, no sync), then runs the fused step from that x0.
"""
from __future__ import annotations

import torch

from .._layout import per_sample
from ..ops.sampling_step import PM, PX


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding of x0 (B, ...): s = the ``ratio`` quantile of |x0| per sample,
    clamped to [1, max_value]; x0 clamped to [-s, s] and divided by s. Computed in float32 (float64
    stays float64), returned in x0's dtype, as diffusers' ``_threshold_sample``."""
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def thresholded_x0(sample: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, index: torch.Tensor,
                   ratio: float, max_value: float) -> torch.Tensor:
    """x0 = PX x + PM m from the device row ``coefs[index]``, then :func:`dynamic_threshold`
    (torch ops on the device; dtype promote(sample, model_output), as diffusers' x0)."""
    dtype = torch.promote_types(sample.dtype, model_output.dtype)
    acc = torch.promote_types(dtype, torch.float32)
    row = coefs[index.reshape(-1).expand(sample.shape[0])].to(acc)
    x0 = per_sample(row[:, PX], sample) * sample.to(acc) + per_sample(row[:, PM], sample) * model_output.to(acc)
    return dynamic_threshold(x0.to(dtype), ratio, max_value)
