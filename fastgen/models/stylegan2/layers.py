"""StyleGAN2's layers (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
on fastgen's fused ops: bias + activation + gain + clamp in one pass (:func:`fastgen.ops.bias_act`)
and the FIR resampling (:func:`fastgen.ops.upfirdn2d`).

Equalised learning rate (Karras et al. 2018, ProGAN): weights are stored N(0, 1) / lr_multiplier
and scaled at run time by lr_multiplier / sqrt(fan_in), so Adam's per-parameter step sizes act on
the same scale in every layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.bias_act import ACTIVATIONS, bias_act
from ...ops.upfirdn2d import upfirdn2d

__all__ = ["EqualizedLinear", "EqualizedConv2d", "ModulatedConv2d", "MinibatchStd", "resample_filter",
           "upsample2x", "downsample2x", "normalize_2nd_moment"]


def resample_filter(taps=(1, 3, 3, 1), device=None) -> torch.Tensor:
    """StyleGAN2's separable binomial FIR filter, normalised to unit sum: float32 (taps,)."""
    f = torch.tensor(taps, dtype=torch.float32, device=device)
    return f / f.sum()


def upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W): zero insertion + the FIR filter (gain 4 keeps the DC level);
    the padding centres a 4-tap filter so that the output is aligned with the input."""
    taps = f.shape[0]
    pad0 = (taps + 1) // 2  # 2 for 4 taps: the filter's centre on the inserted zeros' midpoint
    pad1 = taps // 2 - 1    # 1 for 4 taps: (2H + 3 - 4) + 1 = 2H outputs
    return upfirdn2d(x, f, up=2, padding=[pad0, pad1, pad0, pad1], gain=4.0)


def downsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2) for even H, W: FIR low-pass, then every second pixel."""
    pad = (f.shape[0] - 2) // 2  # 1 for 4 taps: (H + 2 - 4) // 2 + 1 = H / 2
    return upfirdn2d(x, f, down=2, padding=pad)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along ``dim`` (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class EqualizedLinear(nn.Module):
    """Fully connected layer with an equalised learning rate and a fused bias + activation.

    forward(x): (B, in_features) -> (B, out_features), ``bias_act(x @ (W * lr / sqrt(in)).T,
    b * lr, act)``. ``bias_init`` is the initial bias (1 for the style affines, so styles start at 1).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: str = "linear"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.activation = activation
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, dim=1, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, activation={self.activation}"


class EqualizedConv2d(nn.Module):
    """Convolution with an equalised learning rate, optional 2x FIR down/upsampling and a fused
    bias + activation (+ clamp). ``down=2``: FIR low-pass then a stride-2 convolution (the
    discriminator's resampling); ``up=2``: FIR upsampling then the convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None):
        super().__init__()
        if up not in (1, 2) or down not in (1, 2) or (up == 2 and down == 2):
            raise ValueError(f"up and down must each be 1 or 2 and not both 2, got up={up}, down={down}")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", resample_filter(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """x (B, in, H, W) -> (B, out, H * up / down, W * up / down); ``gain`` scales the output
        (and the clamp), as the residual discriminator's sqrt(1/2)."""
        w = self.weight.to(x.dtype) * self.weight_gain
        k = w.shape[-1]
        if self.up == 2:
            x = upsample2x(x, self.resample_filter)
        if self.down == 2:
            # low-pass with the padding that makes the stride-2 k x k convolution land on H / 2
            pad = (self.resample_filter.shape[0] - 2 + k - 1 + 1) // 2
            x = upfirdn2d(x, self.resample_filter, padding=pad)
            x = F.conv2d(x, w, stride=2)
        else:
            x = F.conv2d(x, w, padding=k // 2)
        b = None if self.bias is None else self.bias.to(x.dtype)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, b, dim=1, act=self.activation, gain=ACTIVATIONS[self.activation][2] * gain, clamp=clamp)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution with weight demodulation.

    Per sample b: w'[o, i] = w[o, i] * s[b, i] (the style of input channel i, from the affine of the
    latent w), demodulated: w''[o, i] = w'[o, i] / sqrt(sum_{i,k} w'[o, i, k]^2 + 1e-8), so each output
    channel has unit expected variance without instance normalisation.

    ``fused=True`` builds the per-sample weights and runs one grouped convolution over the batch
    (groups = B); ``fused=False`` scales the activations instead (x * s, a shared-weight conv, then
    the demodulation coefficients): the same numbers, better when B is large relative to the channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, *,
                 demodulate: bool = True, up: int = 1, fused: bool = True):
        super().__init__()
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.demodulate, self.up, self.fused = demodulate, up, fused
        self.register_buffer("resample_filter", resample_filter(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (B, in, H, W), w (B, w_dim) -> (B, out, H * up, W * up), no bias (added by bias_act)."""
        B, C, H, W = x.shape
        styles = self.affine(w) * self.weight_gain  # (B, in)
        weight = self.weight.to(x.dtype)
        k = weight.shape[-1]
        if self.up == 2:
            x = upsample2x(x, self.resample_filter)
        if not self.fused:
            x = F.conv2d(x * styles.to(x.dtype)[:, :, None, None], weight, padding=k // 2)
            if self.demodulate:
                d = (weight.unsqueeze(0) * styles[:, None, :, None, None]).square().sum(dim=[2, 3, 4]).add(1e-8).rsqrt()
                x = x * d.to(x.dtype)[:, :, None, None]
            return x
        wb = weight.unsqueeze(0) * styles.to(x.dtype)[:, None, :, None, None]  # (B, out, in, k, k)
        if self.demodulate:
            wb = wb * wb.square().sum(dim=[2, 3, 4], keepdim=True).add(1e-8).rsqrt()
        out = F.conv2d(x.reshape(1, B * C, *x.shape[2:]), wb.reshape(-1, C, k, k), padding=k // 2, groups=B)
        return out.reshape(B, -1, *out.shape[2:])


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018): per group of ``group_size`` samples, the
    standard deviation of each feature over the group, averaged over features, channels and
    pixels in ``num_channels`` slices, appended as extra channels. The group is the largest divisor
    of the batch that is <= group_size (StyleGAN2 requires the batch to be a multiple)."""

    # Statistics across the batch: a discriminator holding this layer must see real and fake samples
    # in separate forwards (fastgen.gan.penalty reads this flag), or a group would mix them.
    uses_batch_statistics = True

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        G = max(g for g in range(1, min(self.group_size, B) + 1) if B % g == 0)
        F_ = self.num_channels
        y = x.reshape(G, -1, F_, C // F_, H, W)                      # [group, m, f, c, h, w]
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # std over the group
        y = y.mean(dim=[2, 3, 4])                                      # [m, f]
        y = y.reshape(-1, F_, 1, 1).repeat(G, 1, H, W)                  # [B, f, h, w]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
