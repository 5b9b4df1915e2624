"""ProGAN (Karras et al. 2018): progressive growing of GANs.

    ProGANGenerator, ProGANDiscriminator   pixel norm, equalised learning rate, minibatch std (StyleGAN2's
                                           layers), every resolution's layers; set_stage(resolution, alpha)
    ProgressiveSchedule                    4 -> 8 -> ... -> target with fade-in phases
    ProGANTrainer                          drives one fastgen.gan.GANTrainer phase by phase (WGAN-GP + drift)
    progressive_reals                      the real batch at a stage (downsampled, blended while fading)
"""
from .networks import PixelNorm, ProGANDiscriminator, ProGANGenerator
from .training import ProGANTrainer, ProgressiveSchedule, progressive_reals

__all__ = ["ProGANGenerator", "ProGANDiscriminator", "PixelNorm", "ProgressiveSchedule", "ProGANTrainer",
           "progressive_reals"]
