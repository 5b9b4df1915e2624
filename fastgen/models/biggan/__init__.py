"""BigGAN (Brock et al. 2019) for class-conditional image generation.

    BigGANGenerator        shared class embedding + hierarchical latent -> class-conditional BN in
                           residual up-blocks, self-attention, spectral norm; orthogonal regulariser,
                           truncation trick, standing statistics
    BigGANDiscriminator    residual down-blocks, self-attention, spectral norm, projection (Miyato & Koyama 2018)
    layers                 ConditionalBatchNorm2d, SelfAttention (SAGAN), truncate_latent, truncated_normal,
                           orthogonal_regularization

Train with :class:`fastgen.gan.GANTrainer` (``loss="hinge"``, ``g_regularizer=G.orthogonal_regularizer``,
``g_regularizer_weight=1``): benchmarks/run_biggan_digits.py is a recipe.
"""
from .discriminator import BigGANDiscriminator
from .generator import BigGANGenerator
from .layers import ConditionalBatchNorm2d, SelfAttention, orthogonal_regularization, truncate_latent, truncated_normal

__all__ = ["BigGANGenerator", "BigGANDiscriminator", "ConditionalBatchNorm2d", "SelfAttention",
           "orthogonal_regularization", "truncate_latent", "truncated_normal"]
