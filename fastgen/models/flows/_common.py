"""Input checks shared by the flow layers and models."""
from __future__ import annotations

import torch


def check_flow_input(name: str, x: object, channels: int) -> torch.Tensor:
    """x must be a floating (B, channels, H, W) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    return x

