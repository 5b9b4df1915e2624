"""Normalizing flows with exact likelihoods: Glow and RealNVP, and their layers.

    Glow, RealNVP          multi-scale image flows (:class:`MultiScaleFlow` API: to_latent, from_latent,
                           log_prob, bits_per_dim, sample)
    ActNorm, InvConv1x1, AffineCoupling, Squeeze   the invertible layers: forward(x) -> (y, logdet (B,)),
                           inverse(y) -> x
    dequantize, quantize   integer pixels <-> the flows' continuous [-0.5, 0.5) (see multiscale's docstring
                           for the bits/dim convention)
"""
from .actnorm import ActNorm
from .coupling import AffineCoupling
from .glow import Glow
from .invconv import InvConv1x1
from .multiscale import MultiScaleFlow, Squeeze, dequantize, quantize
from .realnvp import RealNVP

__all__ = ["Glow", "RealNVP", "MultiScaleFlow", "ActNorm", "InvConv1x1", "AffineCoupling", "Squeeze",
           "dequantize", "quantize"]
