"""Models as plain nn.Modules, every classic family of generative model.

Diffusion
    UNet                                 DDPM / improved-diffusion U-Net; UNet.ddpm_cifar10(), UNet.from_diffusers(m)
GANs
    DCGANGenerator, DCGANDiscriminator   Radford et al. 2016, square images of power-of-two size >= 16
    PatchGANDiscriminator                Isola et al. 2017 (pix2pix), a map of patch logits
    receptive_field(n_layers)            the input patch one PatchGAN output sees (70 for 3 layers)
    MLPGenerator, MLPDiscriminator       fully connected, for low-dimensional toy data
    StyleGAN2Generator, StyleGAN2Discriminator   Karras et al. 2020 on the fused bias_act / upfirdn2d ops
    BigGANGenerator, BigGANDiscriminator         Brock et al. 2019: class-conditional BN, projection D, self-attention
    ProGANGenerator, ProGANDiscriminator, ProGANTrainer, ProgressiveSchedule
                                         Karras et al. 2018: progressive growing with fade-in
    CycleGANGenerator, ResnetBlock       Zhu et al. 2017 (D: PatchGAN); trainer in fastgen.gan.translation
    StarGANGenerator, StarGANDiscriminator       Choi et al. 2018: one G for many domains, source + domain heads
Autoencoders and VAEs
    Autoencoder, VAE                     conv autoencoder, VAE (beta, IWAE bound); .digits() / .rgb32() presets
    ConvEncoder, ConvDecoder             their halving / doubling conv stacks
    Bernoulli, Gaussian, DiscretizedLogistic, bits_per_dim    decoder likelihoods (log p(x | z) in nats)
VQ-VAEs
    VQVAE, VQVAE2, GatedPixelCNN         VQ-VAE (one and two levels) and the gated PixelCNN prior over its codes
Normalizing flows
    Glow, RealNVP                        exact log-likelihoods (layers in fastgen.models.flows)

Discriminators return raw logits (no sigmoid) for :mod:`fastgen.gan.losses`; DCGAN's and PatchGAN's
take ``norm="layer"``/``"instance"``/``"none"`` for gradient penalties and ``spectral_norm=True``.
"""
from .autoencoder import Autoencoder, ConvDecoder, ConvEncoder
from .biggan import BigGANDiscriminator, BigGANGenerator
from .cyclegan import CycleGANGenerator, ResnetBlock
from .dcgan import DCGANDiscriminator, DCGANGenerator
from .flows import Glow, RealNVP
from .likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, bits_per_dim
from .mlp import MLPDiscriminator, MLPGenerator
from .patchgan import PatchGANDiscriminator, receptive_field
from .pixelcnn import GatedPixelCNN
from .progan import ProGANDiscriminator, ProGANGenerator, ProGANTrainer, ProgressiveSchedule
from .stargan import StarGANDiscriminator, StarGANGenerator
from .stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from .unet import UNet
from .vae import VAE
from .vqvae import VQVAE, VQVAE2

__all__ = [
    "UNet",
    "DCGANGenerator", "DCGANDiscriminator", "PatchGANDiscriminator", "receptive_field", "MLPGenerator",
    "MLPDiscriminator", "StyleGAN2Generator", "StyleGAN2Discriminator", "BigGANGenerator", "BigGANDiscriminator",
    "ProGANGenerator", "ProGANDiscriminator", "ProGANTrainer", "ProgressiveSchedule", "CycleGANGenerator",
    "ResnetBlock", "StarGANGenerator", "StarGANDiscriminator",
    "Autoencoder", "VAE", "ConvEncoder", "ConvDecoder", "Bernoulli", "Gaussian", "DiscretizedLogistic", "bits_per_dim",
    "VQVAE", "VQVAE2", "GatedPixelCNN",
    "Glow", "RealNVP",
]
