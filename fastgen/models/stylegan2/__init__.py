"""StyleGAN2 (Karras et al. 2020) on fastgen's fused bias_act and upfirdn2d ops.

    StyleGAN2Generator       mapping network + skip-architecture synthesis; style mixing,
                             truncation, noise inputs, path-length regulariser
    StyleGAN2Discriminator   residual discriminator, minibatch std, projection conditioning
    layers                   equalised-lr linear / conv, modulated conv (grouped fused path),
                             minibatch std, FIR 2x up / downsampling
"""
from .discriminator import StyleGAN2Discriminator
from .generator import MappingNetwork, StyleGAN2Generator, SynthesisNetwork
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStd, ModulatedConv2d

__all__ = ["StyleGAN2Generator", "StyleGAN2Discriminator", "MappingNetwork", "SynthesisNetwork", "EqualizedLinear",
           "EqualizedConv2d", "ModulatedConv2d", "MinibatchStd"]
