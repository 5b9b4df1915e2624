"""Models as plain nn.Modules: DCGAN, PatchGAN, MLPs for 2-D data.

    DCGANGenerator, DCGANDiscriminator   Radford et al. 2016, square images of power-of-two size >= 16
    PatchGANDiscriminator                Isola et al. 2017 (pix2pix), a map of patch logits
    receptive_field(n_layers)            the input patch one PatchGAN output sees (70 for 3 layers)
    MLPGenerator, MLPDiscriminator       fully connected, for low-dimensional toy data
    UNet                                 DDPM / improved-diffusion U-Net; UNet.ddpm_cifar10(), UNet.from_diffusers(m)
    StyleGAN2Generator, StyleGAN2Discriminator   Karras et al. 2020 on the fused bias_act / upfirdn2d ops
    BigGANGenerator, BigGANDiscriminator  Brock et al. 2019: class-conditional BN, projection D, self-attention
    ProGANGenerator, ProGANDiscriminator, ProGANTrainer   Karras et al. 2018: progressive growing with fade-in
    CycleGANGenerator, ResnetBlock       Zhu et al. 2017 (ResNet generator; D: PatchGAN); trainer in fastgen.gan.translation
    StarGANGenerator, StarGANDiscriminator   Choi et al. 2018: one G for many domains, D with source + domain heads
    Glow, RealNVP                        normalizing flows with exact log-likelihoods (fastgen.models.flows)
    VQVAE, VQVAE2, GatedPixelCNN         VQ-VAE (one and two levels) and the gated PixelCNN prior over its codes
    Autoencoder, VAE                     conv autoencoder, VAE (beta, IWAE bound); .digits() / .rgb32() presets
    ConvEncoder, ConvDecoder             their halving / doubling conv stacks
    Bernoulli, Gaussian, DiscretizedLogistic, bits_per_dim    decoder likelihoods (log p(x | z) in nats)

Discriminators return raw logits (no sigmoid) for :mod:`fastgen.gan.losses`, take
``norm="layer"``/``"instance"``/``"none"`` for gradient penalties and ``spectral_norm=True``.
"""
from .dcgan import DCGANDiscriminator, DCGANGenerator
from .mlp import MLPDiscriminator, MLPGenerator
from .patchgan import PatchGANDiscriminator, receptive_field
from .stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from .unet import UNet
from .autoencoder import Autoencoder, ConvDecoder, ConvEncoder
from .likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, bits_per_dim
from .vae import VAE
from .biggan import BigGANDiscriminator, BigGANGenerator
from .progan import ProGANDiscriminator, ProGANGenerator, ProGANTrainer, ProgressiveSchedule
from .cyclegan import CycleGANGenerator, ResnetBlock
from .stargan import StarGANDiscriminator, StarGANGenerator
from .flows import Glow, RealNVP
from .pixelcnn import GatedPixelCNN
from .vqvae import VQVAE, VQVAE2

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "PatchGANDiscriminator", "receptive_field",
           "MLPGenerator", "MLPDiscriminator", "UNet"]
__all__ += ["StyleGAN2Generator", "StyleGAN2Discriminator"]
__all__ += ["Autoencoder", "VAE", "ConvEncoder", "ConvDecoder", "Bernoulli", "Gaussian", "DiscretizedLogistic",
            "bits_per_dim"]
__all__ += ["VQVAE", "VQVAE2", "GatedPixelCNN"]
__all__ += ["Glow", "RealNVP"]
__all__ += ["BigGANGenerator", "BigGANDiscriminator"]
__all__ += ["ProGANGenerator", "ProGANDiscriminator", "ProGANTrainer", "ProgressiveSchedule"]
__all__ += ["CycleGANGenerator", "ResnetBlock", "StarGANGenerator", "StarGANDiscriminator"]
