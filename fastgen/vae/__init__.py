"""Training autoencoders and VAEs (the models are in :mod:`fastgen.models`: Autoencoder, VAE, likelihoods).

    trainer   VAETrainer: Adam, clipping, EMA, atomic checkpoints, exact resume; VAE-GAN with a discriminator
"""
from .trainer import VAETrainer

__all__ = ["VAETrainer"]
