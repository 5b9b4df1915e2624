"""Decoder likelihoods p(x | z) of autoencoders and VAEs: log-probabilities summed per example, in nats.

A decoder outputs ``params_per_channel * C`` channels for images of C channels; a likelihood turns
them into ``log_prob(params, x)`` (B,) and a point reconstruction ``mean(params)`` in the data's range.

    Bernoulli()                          x in [0, 1]; params: logits (1 per channel)
    Gaussian(logvar=0.0)                 any real x; params: mean (1 per channel), fixed variance
    Gaussian(logvar=None)                params: mean and log-variance (2 per channel), learned
    DiscretizedLogistic(num_bins=256)    x on num_bins levels spread over [-1, 1] (8-bit data: bins of
                                         width 2/255); params: mean and log-scale (2 per channel)

Bernoulli and the discretised logistic are probability *masses* on discrete data, so their
negative log-likelihoods are code lengths directly (:func:`bits_per_dim`); a Gaussian is a density,
whose bits/dim on quantised data needs the bin width (:func:`bits_per_dim`'s ``bin_width``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._validate import check_floating

__all__ = ["Bernoulli", "Gaussian", "DiscretizedLogistic", "LIKELIHOODS", "make_likelihood", "bits_per_dim"]

_LOG_2PI = math.log(2 * math.pi)


def _sum_per_example(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(dim=1)


def _check_params(params: object, x: torch.Tensor, per_channel: int, kind: str) -> torch.Tensor:
    params = check_floating("params", params, min_dim=2)
    expected = (x.shape[0], per_channel * x.shape[1], *x.shape[2:])
    if tuple(params.shape) != expected:
        raise ValueError(f"params of a {kind} likelihood must have shape {expected} ({per_channel} per channel of x "
                         f"{tuple(x.shape)}), got {tuple(params.shape)}")
    if params.device != x.device:
        raise ValueError(f"params is on {params.device} but x is on {x.device}; they must share a device")
    return params


def _check_x(x: object) -> torch.Tensor:
    x = check_floating("x", x, min_dim=2)
    if x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, C, ...), got shape {tuple(x.shape)}")
    return x


def _check_range(x: torch.Tensor, lo: float, hi: float, kind: str) -> None:
    if torch.compiler.is_compiling():
        return
    bad = torch.isnan(x) | (x < lo) | (x > hi)
    if bool(bad.any()):
        raise ValueError(f"x must lie in [{lo:g}, {hi:g}] for a {kind} likelihood, got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]{' and NaN' if bool(torch.isnan(x).any()) else ''}")


class Bernoulli:
    """log p(x | logits) = sum x * logits - softplus(logits), i.e. minus ``F.binary_cross_entropy_with_logits``
    (reduction="sum" per example). x in [0, 1]: binary data, or grey levels read as probabilities
    (then the value is a cross-entropy, not the log of a normalised probability)."""

    params_per_channel = 1
    name = "bernoulli"

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) in nats, float32 at least, for logits ``params`` (B, C, ...) and x (B, C, ...)."""
        x = _check_x(x)
        params = _check_params(params, x, 1, self.name)
        _check_range(x, 0.0, 1.0, self.name)
        logits = params.to(torch.promote_types(params.dtype, torch.float32))
        return -_sum_per_example(F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none"))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class Gaussian:
    """log N(x; mean, exp(logvar)) summed per example.

    ``logvar``: a float for a fixed variance (the decoder outputs the mean only; with logvar=0 the
    loss is 0.5 * squared error plus a constant), or None to learn a per-pixel log-variance (the
    decoder outputs mean and logvar, channels [:C] and [C:]). A learned variance on quantised data
    can shrink without bound; clamp it with ``min_logvar`` (a float, or None for no clamp).
    """

    name = "gaussian"

    def __init__(self, logvar: float | None = 0.0, *, min_logvar: float | None = -9.0):
        for label, value in (("logvar", logvar), ("min_logvar", min_logvar)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"{label} must be None or a finite number, got {value!r}")
        self.logvar = None if logvar is None else float(logvar)
        self.min_logvar = None if min_logvar is None else float(min_logvar)
        self.params_per_channel = 1 if logvar is not None else 2

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.logvar is not None:
            return params, torch.full((), self.logvar, dtype=params.dtype, device=params.device)
        mean, logvar = params.chunk(2, dim=1)
        if self.min_logvar is not None:
            logvar = logvar.clamp(min=self.min_logvar)
        return mean, logvar

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) in nats (a density: see :func:`bits_per_dim` for quantised data)."""
        x = _check_x(x)
        params = _check_params(params, x, self.params_per_channel, self.name)
        params = params.to(torch.promote_types(params.dtype, torch.float32))
        mean, logvar = self._split(params)
        x = x.to(params.dtype)
        return _sum_per_example(-0.5 * ((x - mean).square() * torch.exp(-logvar) + logvar + _LOG_2PI))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._split(params)[0]


class DiscretizedLogistic:
    """The discretised logistic of PixelCNN++ (Salimans et al. 2017) and IAF (Kingma et al. 2016).

    x takes ``num_bins`` values k = 0 .. num_bins - 1, stored as x = 2k / (num_bins - 1) - 1 in [-1, 1]
    (for 8-bit images x = 2k/255 - 1, bins of width 2/255). With the logistic CDF sigma((x - mu) / s)
    and half a bin h = 1 / (num_bins - 1):

        P(k) = sigma((x + h - mu) / s) - sigma((x - h - mu) / s)     for 0 < k < num_bins - 1
        P(0) = sigma((x + h - mu) / s)                               (all mass below the first bin)
        P(num_bins - 1) = 1 - sigma((x - h - mu) / s)                (all mass above the last)

    so the num_bins masses sum to 1 exactly. The middle bins use the identity
    sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^(b - a)), whose log is
    logsigmoid(a) + logsigmoid(-b) + log(-expm1(b - a)) with b - a = -2h / s: finite and accurate for
    any scale, so PixelCNN++'s fallback to a midpoint density for tiny bin masses is not needed.

    params: (B, 2C, ...), mean (channels [:C], the decoder's raw output) and log-scale ([C:],
    clamped below at ``min_log_scale``, PixelCNN++'s -7). x is read as its nearest level; values
    outside [-1, 1] raise.
    """

    params_per_channel = 2
    name = "discretized logistic"

    def __init__(self, num_bins: int = 256, *, min_log_scale: float = -7.0):
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an int >= 2 (256 for 8-bit data), got {num_bins!r}")
        if isinstance(min_log_scale, bool) or not isinstance(min_log_scale, (int, float)) \
                or not math.isfinite(min_log_scale):
            raise ValueError(f"min_log_scale must be a finite number, got {min_log_scale!r}")
        self.num_bins, self.min_log_scale = num_bins, float(min_log_scale)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = params.chunk(2, dim=1)
        return mean, log_scale.clamp(min=self.min_log_scale)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) log-probabilities (masses) in nats, float32 at least."""
        x = _check_x(x)
        params = _check_params(params, x, 2, self.name)
        _check_range(x, -1.0, 1.0, self.name)
        params = params.to(torch.promote_types(params.dtype, torch.float32))
        mean, log_scale = self._split(params)
        levels = self.num_bins - 1
        k = torch.round((x.to(params.dtype) + 1) * (levels / 2))  # the nearest level, 0 .. num_bins - 1
        centered = k * (2.0 / levels) - 1.0 - mean
        inv_s = torch.exp(-log_scale)
        upper = inv_s * (centered + 1.0 / levels)
        lower = inv_s * (centered - 1.0 / levels)
        log_cdf_upper = F.logsigmoid(upper)      # log P(X <= x + h): the first bin's mass
        log_sf_lower = F.logsigmoid(-lower)      # log P(X > x - h): the last bin's mass
        log_mid = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(-(2.0 / levels) * inv_s))
        log_p = torch.where(k <= 0, log_cdf_upper, torch.where(k >= levels, log_sf_lower, log_mid))
        return _sum_per_example(log_p)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The logistic's location clamped to [-1, 1] (its median; a point reconstruction)."""
        return self._split(params)[0].clamp(-1.0, 1.0)


LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")


def make_likelihood(likelihood: object):
    """A likelihood object from itself or from its name in :data:`LIKELIHOODS` (defaults: a unit-variance
    Gaussian, 256 bins)."""
    if isinstance(likelihood, (Bernoulli, Gaussian, DiscretizedLogistic)):
        return likelihood
    if likelihood == "bernoulli":
        return Bernoulli()
    if likelihood == "gaussian":
        return Gaussian()
    if likelihood == "discretized_logistic":
        return DiscretizedLogistic()
    raise ValueError(f"likelihood must be one of {LIKELIHOODS} or a Bernoulli / Gaussian / DiscretizedLogistic "
                     f"object, got {likelihood!r}")


def bits_per_dim(nll: torch.Tensor | float, num_dims: int, *, bin_width: float | None = None):
    """Negative log-likelihoods in nats per example -> bits per dimension.

    bits/dim = (nll - num_dims * log(bin_width)) / (num_dims * log 2).

    ``bin_width=None``: ``nll`` is already minus the log of a probability *mass* of the discrete data
    (:class:`DiscretizedLogistic`, :class:`Bernoulli` on binary data), comparable as it is with the
    literature's bits/dim on 8-bit images. A *density* (:class:`Gaussian`, a flow on dequantised data)
    needs the width of one quantisation level in the units the model saw: for 8-bit data scaled to
    [-1, 1] and dequantised with uniform noise, 2/256 (x = 2 (k + u) / 256 - 1), adding
    log(256 / 2) = log 128 nats per dimension -- the change of variables back to [0, 256), where a
    density's bits/dim bounds the 8-bit code length (Theis et al. 2016). Pixels scaled as
    x = 2k/255 - 1 without noise are levels 2/255 apart: bin_width = 2/255.

    Args:
        nll: nats, a tensor (any shape) or a float.
        num_dims: dimensions per example (C * H * W), an int >= 1.
        bin_width: None or a number > 0.
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be an int >= 1 (C * H * W), got {num_dims!r}")
    shift = 0.0
    if bin_width is not None:
        if isinstance(bin_width, bool) or not isinstance(bin_width, (int, float)) or not 0 < bin_width < math.inf:
            raise ValueError(f"bin_width must be None or a finite number > 0, got {bin_width!r}")
        shift = -num_dims * math.log(bin_width)
    return (nll + shift) / (num_dims * math.log(2.0))
