"""Affine coupling (Dinh et al. 2017, RealNVP; Kingma & Dhariwal 2018, Glow) with channel or checkerboard masks."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_flow_input

__all__ = ["AffineCoupling", "MASKS", "SCALES"]

MASKS = ("channel", "checkerboard")
SCALES = ("sigmoid", "tanh")
_LOGSIGMOID_2 = math.log(1.0 / (1.0 + math.exp(-2.0)))  # log sigmoid(2)


def _net(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """Glow's coupling network: conv 3x3 -> ReLU -> conv 1x1 -> ReLU -> conv 3x3, the last conv zero
    (weight and bias), so the coupling starts as the identity."""
    last = nn.Conv2d(hidden, out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)


def checkerboard(height: int, width: int, parity: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, H, W) mask, 1 where (i + j + parity) is even: the pixels that pass through unchanged."""
    i = torch.arange(height, device=like.device).view(-1, 1)
    j = torch.arange(width, device=like.device).view(1, -1)
    return ((i + j + parity) % 2 == 0).to(like.dtype).view(1, 1, height, width)


class AffineCoupling(nn.Module):
    """y_b = x_b * s(x_a) + t(x_a) and y_a = x_a; log|det| = sum over b of log s.

    ``a`` (conditioning) and ``b`` (transformed) are, for ``mask="channel"``, the first C // 2 channels
    and the rest (swapped when ``flip``); for ``mask="checkerboard"``, the pixels with i + j even and
    odd (swapped when ``flip``), every channel. The network sees x_a (the checkerboard one sees x with
    the b pixels zeroed) and outputs a raw scale a_raw and the shift t.

    The scale s, by ``scale``:
        "sigmoid"  s = sigmoid(a_raw + 2) / sigmoid(2), in (0, 1.135): Glow's bounded scale, divided by
                   sigmoid(2) so that the zero-initialised last layer gives s = 1 exactly (Glow's own
                   starts at s = 0.88). Bounded above, it cannot blow up activations, which is why Glow
                   prefers it to exp.
        "tanh"     s = exp(scale_c * tanh(a_raw)), scale_c a learned per-channel factor initialised to 1:
                   RealNVP's bounded exponential, in [exp(-|scale_c|), exp(|scale_c|)].
    Both start as the identity (s = 1, t = 0).

    Args:
        channels: C (>= 2 for the channel mask).
        hidden: width of the coupling network.
        mask: "channel" or "checkerboard".
        flip: swap the roles of the two halves (alternate it between consecutive couplings).
        scale: "sigmoid" or "tanh".
    forward(x): x (B, C, H, W) floating -> (y, logdet (B,)) in x's dtype.
    inverse(y): y -> x, x_b = (y_b - t) / s.
    """

    def __init__(self, channels: int, hidden: int, *, mask: str = "channel", flip: bool = False,
                 scale: str = "sigmoid"):
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if mask == "channel" and channels < 2:
            raise ValueError(f"a channel-mask coupling needs channels >= 2 (one half conditions the other), got {channels}")
        self.channels, self.mask, self.flip, self.scale = channels, mask, bool(flip), scale
        if mask == "channel":
            first = channels // 2
            n_a, n_b = (channels - first, first) if self.flip else (first, channels - first)
        else:
            n_a = n_b = channels
        self.net = _net(n_a, hidden, 2 * n_b)
        if scale == "tanh":
            self.scale_factor = nn.Parameter(torch.ones(1, n_b, 1, 1))

    def _log_scale_shift(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, shift = self.net(x_a).chunk(2, dim=1)
        if self.scale == "sigmoid":
            log_s = F.logsigmoid(raw + 2.0) - _LOGSIGMOID_2
        else:
            log_s = self.scale_factor * torch.tanh(raw)
        return log_s, shift

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.channels // 2
        if self.flip:
            return x[:, first:], x[:, :first]
        return x[:, :first], x[:, first:]

    def _join(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        return torch.cat([x_b, x_a] if self.flip else [x_a, x_b], dim=1)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"a checkerboard coupling needs at least 2 pixels, got spatial size {tuple(x.shape[2:])}")
        return checkerboard(x.shape[2], x.shape[3], int(self.flip), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_flow_input("x", x, self.channels)
        if self.mask == "channel":
            x_a, x_b = self._split(x)
            log_s, shift = self._log_scale_shift(x_a)
            return self._join(x_a, x_b * torch.exp(log_s) + shift), log_s.flatten(1).sum(1)
        keep = self._mask(x)
        log_s, shift = self._log_scale_shift(x * keep)
        log_s, shift = log_s * (1 - keep), shift * (1 - keep)  # zero on the pass-through pixels
        return x * torch.exp(log_s) + shift, log_s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = check_flow_input("y", y, self.channels)
        if self.mask == "channel":
            y_a, y_b = self._split(y)
            log_s, shift = self._log_scale_shift(y_a)
            return self._join(y_a, (y_b - shift) * torch.exp(-log_s))
        keep = self._mask(y)
        log_s, shift = self._log_scale_shift(y * keep)
        log_s, shift = log_s * (1 - keep), shift * (1 - keep)
        return (y - shift) * torch.exp(-log_s)

    def extra_repr(self) -> str:
        return f"{self.channels}, mask={self.mask!r}, flip={self.flip}, scale={self.scale!r}"
