"""GANs: losses, gradient penalties, regularizers, the trainer and the mode-coverage metric.

    losses        discriminator_loss / generator_loss: "ns", "minimax", "wgan", "lsgan", "hinge";
                  adversarial_reconstruction_loss (VAE-GAN)
    penalty       gradient_penalty(D, real, fake, kind="wgan-gp" | "wgan-gp-one-sided" | "r1" | "r2"),
                  discriminator_objective (loss + penalty with the fewest passes of D)
    regularizers  LazyRegularization (StyleGAN2), apply_spectral_norm (Miyato et al. 2018)
    trainer       GANTrainer: n_critic, lazy regularization, EMA of G, AMP, atomic checkpoints, exact resume
    metrics       mode_coverage on mixtures of Gaussians (unrolled GAN / VEEGAN / PacGAN)
    jacobian_truncation  jacobian_truncated_sample: keep the samples with the smallest ||dG/dz||
                  (Tanielian et al. 2020), which drops those between disconnected modes
    recipes       the 2-D mixture recipes (`fastgen train gan2d`)
    translation   CycleGANTrainer, StarGANTrainer (unpaired image-to-image), ImagePool, linear_decay
"""
from .losses import LOSS_KINDS, adversarial_reconstruction_loss, discriminator_loss, generator_loss
from .metrics import ModeCoverage, mode_coverage
from .jacobian_truncation import TruncatedSamples, jacobian_norms, jacobian_truncated_sample
from .penalty import PENALTY_KINDS, discriminator_objective, gradient_penalty
from .regularizers import LazyRegularization, apply_spectral_norm
from .trainer import GANTrainer, linear_lr_decay
from .image_pool import ImagePool
from .translation import CycleGANTrainer, StarGANTrainer, linear_decay

__all__ = ["LOSS_KINDS", "discriminator_loss", "generator_loss", "adversarial_reconstruction_loss",
           "PENALTY_KINDS", "gradient_penalty", "discriminator_objective", "LazyRegularization",
           "apply_spectral_norm", "GANTrainer", "linear_lr_decay", "ModeCoverage", "mode_coverage",
           "TruncatedSamples", "jacobian_norms", "jacobian_truncated_sample", "ImagePool",
           "CycleGANTrainer", "StarGANTrainer", "linear_decay"]
