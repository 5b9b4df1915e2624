"""StarGAN (Choi et al. 2018, "StarGAN: unified generative adversarial networks for multi-domain
image-to-image translation"): one generator for every pair of domains, conditioned on the target
domain's label, and a discriminator with two heads on one trunk.

Generator (the paper's Table 4): the image and the target label, one constant plane per domain
(a one-hot label spatially replicated), concatenated along channels; 7x7 conv, two 4x4 stride-2
convs, residual blocks, two 4x4 stride-2 transposed convs (instance norm + ReLU after each), 7x7
conv and tanh. Discriminator: 4x4 stride-2 convs with LeakyReLU(0.01) and no normalisation (it is
trained with WGAN-GP, whose per-sample penalty a batch norm would break), then two heads:

    D_src  3x3 conv to 1 channel: a PatchGAN map of real/fake scores (B, 1, H / 2^L, W / 2^L)
    D_cls  a conv whose kernel covers the whole last feature map: domain logits (B, c_dim)

The training loop is :class:`fastgen.gan.translation.StarGANTrainer`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import _check_images, _positive_int
from .cyclegan import ResnetBlock, check_translation_size

__all__ = ["StarGANGenerator", "StarGANDiscriminator", "domain_planes", "check_domain_labels"]


def check_domain_labels(labels: object, batch: int, c_dim: int, device: torch.device, name: str = "labels") -> torch.Tensor:
    """labels must be an int64 tensor (batch,) on ``device`` with values in [0, c_dim)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (batch,):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"{name} must be an int64 tensor of shape ({batch},) (one domain per image), got {got}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the images are on {device}")
    if batch and bool(((labels < 0) | (labels >= c_dim)).any()):
        raise ValueError(f"{name} must lie in [0, {c_dim}) (the domains), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def domain_planes(labels: torch.Tensor, c_dim: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) int64 domains -> (B, c_dim, height, width): plane k is 1 where the label is k, else 0."""
    return F.one_hot(labels, c_dim).to(dtype)[:, :, None, None].expand(-1, -1, height, width)


class StarGANGenerator(nn.Module):
    """(image, target domain) -> translated image.

    Args:
        c_dim: the number of domains, >= 2.
        image_channels: channels of the images.
        base_channels: channels of the first conv (64 in the paper).
        n_blocks: residual blocks at the bottleneck (6 in the paper).
        n_downsampling: 4x4 stride-2 halvings (2 in the paper); H and W must be divisible by
            2**n_downsampling with a bottleneck of at least 2x2.

    forward(x, labels): x floating (B, image_channels, H, W) in [-1, 1], labels int64 (B,) in
    [0, c_dim) -> (B, image_channels, H, W) in [-1, 1], x's dtype.
    """

    def __init__(self, c_dim: int, image_channels: int = 3, base_channels: int = 64, n_blocks: int = 6,
                 n_downsampling: int = 2):
        super().__init__()
        self.c_dim = _positive_int("c_dim", c_dim)
        if self.c_dim < 2:
            raise ValueError(f"c_dim must be >= 2 (a translation needs two domains), got {c_dim}")
        self.image_channels = _positive_int("image_channels", image_channels)
        k = _positive_int("base_channels", base_channels)
        self.n_downsampling = _positive_int("n_downsampling", n_downsampling)
        n_blocks = _positive_int("n_blocks", n_blocks)
        layers = [nn.Conv2d(self.image_channels + self.c_dim, k, 7, padding=3, bias=False),
                  nn.InstanceNorm2d(k, affine=True), nn.ReLU(True)]
        c = k
        for _ in range(self.n_downsampling):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False), nn.InstanceNorm2d(2 * c, affine=True),
                       nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c, padding="zeros", affine=True) for _ in range(n_blocks)]
        for _ in range(self.n_downsampling):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                       nn.InstanceNorm2d(c // 2, affine=True), nn.ReLU(True)]
            c //= 2
        layers += [nn.Conv2d(c, self.image_channels, 7, padding=3, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = _check_images(x, self.image_channels, None)
        check_translation_size(x, self.n_downsampling)
        labels = check_domain_labels(labels, x.shape[0], self.c_dim, x.device)
        planes = domain_planes(labels, self.c_dim, x.shape[2], x.shape[3], x.dtype)
        return self.net(torch.cat([x, planes], dim=1))


class StarGANDiscriminator(nn.Module):
    """image -> (source logits (B, 1, S, S), domain logits (B, c_dim)), S = image_size / 2**n_layers.

    Args:
        c_dim: the number of domains, >= 2.
        image_size: H = W of the images it takes (the domain head's kernel covers the whole last
            feature map, so the size is fixed): a multiple of 2**n_layers.
        image_channels: channels of the images.
        base_channels: channels of the first conv (64 in the paper), doubled per layer.
        n_layers: 4x4 stride-2 convs (6 at 128x128 in the paper), >= 1.

    forward(x): x floating (B, image_channels, image_size, image_size) -> (src, cls), x's dtype;
    raw logits (no sigmoid / softmax). :meth:`source` returns the source map alone (the critic whose
    gradient WGAN-GP penalises).
    """

    def __init__(self, c_dim: int, image_size: int, image_channels: int = 3, base_channels: int = 64,
                 n_layers: int = 6):
        super().__init__()
        self.c_dim = _positive_int("c_dim", c_dim)
        if self.c_dim < 2:
            raise ValueError(f"c_dim must be >= 2 (a translation needs two domains), got {c_dim}")
        self.image_size = _positive_int("image_size", image_size)
        self.image_channels = _positive_int("image_channels", image_channels)
        c = _positive_int("base_channels", base_channels)
        self.n_layers = _positive_int("n_layers", n_layers)
        if self.image_size % 2 ** self.n_layers:
            raise ValueError(f"image_size must be a multiple of 2**n_layers = {2 ** self.n_layers}, got {image_size}")
        layers = [nn.Conv2d(self.image_channels, c, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        for _ in range(self.n_layers - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            c *= 2
        self.trunk = nn.Sequential(*layers)
        self.src = nn.Conv2d(c, 1, 3, padding=1, bias=False)
        self.cls = nn.Conv2d(c, self.c_dim, self.image_size // 2 ** self.n_layers, bias=False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(_check_images(x, self.image_channels, self.image_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._features(x)
        return self.src(h), self.cls(h).flatten(1)

    def source(self, x: torch.Tensor) -> torch.Tensor:
        """The real/fake score map (B, 1, S, S) alone."""
        return self.src(self._features(x))
