"""ActNorm (Kingma & Dhariwal 2018, Glow): a per-channel affine map with data-dependent initialisation."""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import check_flow_input

__all__ = ["ActNorm"]

# Added to the standard deviation at initialisation, as Glow's code does: a constant channel (std 0)
# gets scale 1e6 instead of inf.
INIT_EPS = 1e-6


class ActNorm(nn.Module):
    """y = (x + bias) * exp(log_scale), per channel; log|det dy/dx| = H * W * sum(log_scale).

    The first :meth:`forward` call (training or not, under autograd or not) sets ``bias`` and
    ``log_scale`` so that its batch comes out with zero mean and unit variance per channel (over
    batch and space, the biased variance, std + 1e-6), then sets the ``initialized`` buffer, so the
    initialisation survives ``state_dict`` round trips and is never redone. An :meth:`inverse` before
    any forward uses the identity parameters (bias 0, log_scale 0).

    Args:
        channels: C.
    forward(x): x (B, C, H, W) floating -> (y (B, C, H, W), logdet (B,)) in x's dtype.
    inverse(y): y (B, C, H, W) -> x.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        # a Python copy of the buffer once it is known to be True: reading a CUDA buffer in every
        # forward would synchronise the host with the device once per layer
        self._known_initialized = False

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias and log_scale from the batch x (B, C, H, W): zero mean, unit variance per channel."""
        # two-pass statistics in at least float32 (never E[x^2] - E[x]^2)
        xs = x.transpose(0, 1).reshape(self.channels, -1).to(torch.promote_types(x.dtype, torch.float32))
        mean = xs.mean(dim=1)
        std = (xs - mean[:, None]).square().mean(dim=1).sqrt()
        self.bias.copy_(-mean.view(1, -1, 1, 1))
        self.log_scale.copy_(-torch.log(std + INIT_EPS).view(1, -1, 1, 1))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_flow_input("x", x, self.channels)
        if not self._known_initialized:
            if not bool(self.initialized):
                self.initialize(x)
            self._known_initialized = True
        y = (x + self.bias) * torch.exp(self.log_scale)
        logdet = (x.shape[2] * x.shape[3]) * self.log_scale.sum()
        return y, logdet.expand(x.shape[0])

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded buffer decides again

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = check_flow_input("y", y, self.channels)
        return y * torch.exp(-self.log_scale) - self.bias

    def extra_repr(self) -> str:
        return f"{self.channels}"
