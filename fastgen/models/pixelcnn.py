"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders")
over maps of discrete codes: the prior of a VQ-VAE.

Each layer has a vertical stack (sees every row above) and a horizontal stack (sees the pixels to
the left in the current row, plus the vertical stack's view), so the receptive field has no blind
spot. The gate is tanh(a) * sigmoid(b). The vertical convolution has a (k//2 + 1) x k kernel whose
output row i, after cropping, covers input rows i - k//2 .. i; the first layer (mask "A") zeroes
the kernel's last row and column so row i and pixel (i, j) are not seen, and has no residual (its
input is the map itself); later layers (mask "B") may see their own position, because their
inputs already exclude it. The vertical stack reaches the horizontal one through a 1x1
convolution, which is causal because the vertical features of row i only depend on rows < i.
Optional conditioning (VQ-VAE-2's bottom prior given the top codes) is a (B, C_cond, H, W) map
added to every gate through 1x1 convolutions; it is given, so it does not break causality.

``logits(codes)`` -> (B, K, H, W) for int64 codes (B, H, W); ``loss`` is the mean cross-entropy
in nats per code; ``sample`` draws codes in raster order, one forward pass per position.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _validate


class GatedMaskedConv2d(nn.Module):
    """One gated layer: (v, h) -> (v', h'), channels ``dim``, kernel ``kernel`` (odd), mask "A" or "B"."""

    def __init__(self, dim: int, kernel: int, mask: str, cond_channels: int = 0):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        if mask not in ("A", "B"):
            raise ValueError(f"mask must be 'A' or 'B', got {mask!r}")
        self.mask, half = mask, kernel // 2
        self.vertical = nn.Conv2d(dim, 2 * dim, (half + 1, kernel), padding=(half, half))
        self.horizontal = nn.Conv2d(dim, 2 * dim, (1, half + 1), padding=(0, half))
        self.v_to_h = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.h_out = nn.Conv2d(dim, dim, 1)
        self.cond = nn.Conv2d(cond_channels, 2 * dim, 1, bias=False) if cond_channels else None
        if mask == "A":  # exclude the current row (vertical) and the current pixel (horizontal)
            self.register_buffer("v_mask", torch.ones_like(self.vertical.weight).index_fill_(2, torch.tensor([half]), 0))
            self.register_buffer("h_mask", torch.ones_like(self.horizontal.weight).index_fill_(3, torch.tensor([half]), 0))

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None):
        height, width = v.shape[-2:]
        wv, wh = self.vertical.weight, self.horizontal.weight
        if self.mask == "A":
            wv, wh = wv * self.v_mask, wh * self.h_mask
        v_pre = F.conv2d(v, wv, self.vertical.bias, padding=self.vertical.padding)[:, :, :height]
        h_pre = F.conv2d(h, wh, self.horizontal.bias, padding=self.horizontal.padding)[:, :, :, :width]
        bias = self.cond(cond) if self.cond is not None else 0.0
        v_out = self._gate(v_pre + bias)
        h_gated = self._gate(h_pre + self.v_to_h(v_pre) + bias)
        h_out = self.h_out(h_gated) + (h if self.mask == "B" else 0.0)  # no residual from the map itself
        return v_out, h_out


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over (B, H, W) maps of codes in [0, num_codes).

    Args:
        num_codes: K, the codebook size.
        dim: channels of the stacks.
        layers: gated layers (the first with mask "A").
        kernel: odd kernel size of the stacks.
        cond_channels: channels of an optional conditioning map (0: unconditional).
    """

    def __init__(self, num_codes: int, dim: int = 64, layers: int = 6, kernel: int = 3, cond_channels: int = 0):
        super().__init__()
        self.num_codes = _validate.check_int("num_codes", num_codes, 2)
        _validate.check_int("layers", layers, 1)
        self.cond_channels = _validate.check_int("cond_channels", cond_channels, 0)
        self.embed = nn.Embedding(num_codes, dim)
        self.layers = nn.ModuleList(GatedMaskedConv2d(dim, kernel, "A" if i == 0 else "B", cond_channels)
                                    for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, num_codes, 1))

    def _check(self, codes: torch.Tensor, cond: torch.Tensor | None) -> None:
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int64 or codes.dim() != 3:
            raise ValueError(f"codes must be an int64 tensor (B, H, W), got "
                             f"{getattr(codes, 'dtype', type(codes).__name__)} {tuple(getattr(codes, 'shape', ()))}")
        if (cond is None) != (self.cond_channels == 0):
            raise ValueError(f"cond must be given exactly when cond_channels > 0 (cond_channels={self.cond_channels})")
        if cond is not None and (cond.dim() != 4 or cond.shape[1] != self.cond_channels
                                 or cond.shape[0] != codes.shape[0] or cond.shape[2:] != codes.shape[1:]):
            raise ValueError(f"cond must have shape (B, {self.cond_channels}, H, W) = "
                             f"({codes.shape[0]}, {self.cond_channels}, {codes.shape[1]}, {codes.shape[2]}), "
                             f"got {tuple(cond.shape)}")

    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, H, W) float logits of each position given the positions before it in raster order."""
        self._check(codes, cond)
        x = self.embed(codes).permute(0, 3, 1, 2)
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.head(h)

    def loss(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code (a float scalar)."""
        return F.cross_entropy(self.logits(codes, cond), codes)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int], cond: torch.Tensor | None = None, *,
               generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` code maps of ``shape`` (H, W), int64 (n, H, W), drawn in raster order."""
        n = _validate.check_int("n", n, 1)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        device = self.embed.weight.device
        codes = torch.zeros((n,) + tuple(shape), dtype=torch.int64, device=device)
        for i in range(shape[0]):
            for j in range(shape[1]):
                probs = torch.softmax(self.logits(codes, cond)[:, :, i, j].float() / temperature, dim=1)
                codes[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return codes
