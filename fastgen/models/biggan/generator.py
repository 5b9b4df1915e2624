"""BigGAN's generator: a shared class embedding, the hierarchical latent, residual up-blocks with
class-conditional batch norm, self-attention at one resolution, spectral norm and orthogonal init."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...gan.regularizers import apply_spectral_norm
from .._common import _positive_int
from .layers import ConditionalBatchNorm2d, SelfAttention, labels_to_onehot, orthogonal_regularization, truncated_normal

__all__ = ["BigGANGenerator", "check_resolution", "orthogonal_init_"]


def check_resolution(resolution: object, name: str = "img_resolution") -> int:
    resolution = _positive_int(name, resolution)
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"{name} must be a power of two >= 8 (BigGAN grows from 4x4), got {resolution}")
    return resolution


def check_attention(attention_resolution: object, img_resolution: int, lowest: int) -> int | None:
    if attention_resolution is None:
        return None
    if attention_resolution not in [2 ** i for i in range(lowest.bit_length() - 1, img_resolution.bit_length())]:
        raise ValueError(f"attention_resolution must be None or a power of two in [{lowest}, {img_resolution}], "
                         f"got {attention_resolution!r}")
    return attention_resolution


def orthogonal_init_(module: nn.Module) -> None:
    """BigGAN's initialisation: orthogonal weights for every conv and linear layer, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GBlock(nn.Module):
    """x (B, in, H, W), y (B, cond_dim) -> (B, out, 2H, 2W):
    conv3x3(relu(CBN(conv3x3(up(relu(CBN(x, y)))), y))) + conv1x1(up(x)), up = nearest 2x."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, cond_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(out_channels, cond_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class BigGANGenerator(nn.Module):
    """z (B, latent_dim), c (B, c_dim) one-hot -> images (B, img_channels, R, R) in (-1, 1).

    The hierarchical latent: z is split into num_blocks + 1 equal chunks; the first feeds the linear
    layer to the 4x4 map of ``ch * 2**num_blocks`` channels, each other one is concatenated with the
    shared class embedding (c @ E, E (c_dim, shared_dim), one embedding for all blocks) and conditions
    one up-block's batch norms. Up-blocks halve the channels and double the size up to R (num_blocks =
    log2(R / 4)); self-attention follows the block that reaches ``attention_resolution``; then
    BN, ReLU, conv3x3 and tanh. Every conv and linear layer except the shared embedding is spectrally
    normalised (as in BigGAN) after an orthogonal initialisation.

    This satisfies :class:`fastgen.gan.GANTrainer`'s conditional contract (``latent_dim``, ``c_dim``,
    ``forward(z, c)``); pass ``g_regularizer=G.orthogonal_regularizer, g_regularizer_weight=1``.

    Args:
        img_resolution: R, a power of two >= 8.
        img_channels: output channels.
        c_dim: number of classes, >= 1.
        latent_dim: size of z, a multiple of num_blocks + 1.
        ch: channels at the output resolution (BigGAN's ``G_ch``).
        shared_dim: width of the shared class embedding.
        attention_resolution: None or a resolution in [8, R] where a self-attention block sits.
        ortho_beta: beta of :meth:`orthogonal_regularizer` (BigGAN: 1e-4).
    """

    def __init__(self, img_resolution: int = 32, img_channels: int = 3, *, c_dim: int, latent_dim: int = 120,
                 ch: int = 32, shared_dim: int = 128, attention_resolution: int | None = 16,
                 ortho_beta: float = 1e-4):
        super().__init__()
        self.img_resolution = check_resolution(img_resolution)
        self.img_channels = _positive_int("img_channels", img_channels)
        self.c_dim = _positive_int("c_dim", c_dim)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        ch, shared_dim = _positive_int("ch", ch), _positive_int("shared_dim", shared_dim)
        self.attention_resolution = check_attention(attention_resolution, self.img_resolution, 8)
        num_blocks = self.img_resolution.bit_length() - 3  # log2(R / 4)
        if self.latent_dim % (num_blocks + 1):
            raise ValueError(f"latent_dim must be a multiple of {num_blocks + 1} (one chunk for the 4x4 input and one "
                             f"per up-block at resolution {self.img_resolution}), got {self.latent_dim}")
        self.chunk = self.latent_dim // (num_blocks + 1)
        if (isinstance(ortho_beta, bool) or not isinstance(ortho_beta, (int, float))
                or not 0 <= ortho_beta < float("inf")):
            raise ValueError(f"ortho_beta must be a finite number >= 0, got {ortho_beta!r}")
        self.ortho_beta = float(ortho_beta)
        widths = [ch * 2 ** (num_blocks - i) for i in range(num_blocks + 1)]  # 4x4 ... R
        self.shared = nn.Linear(self.c_dim, shared_dim, bias=False)  # an embedding table, applied to one-hot c
        self.linear = nn.Linear(self.chunk, widths[0] * 16)
        self.blocks = nn.ModuleList(GBlock(a, b, self.chunk + shared_dim) for a, b in zip(widths[:-1], widths[1:]))
        res = [8 * 2 ** i for i in range(num_blocks)]
        self.attention = nn.ModuleDict({str(r): SelfAttention(w) for r, w in zip(res, widths[1:])
                                        if r == self.attention_resolution})
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], self.img_channels, 3, padding=1)
        orthogonal_init_(self)
        nn.init.normal_(self.shared.weight)  # an embedding: N(0, 1) rows, as nn.Embedding initialises them
        for part in (self.linear, self.blocks, self.attention, self.out_conv):
            if len(list(part.parameters())):
                apply_spectral_norm(part)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(getattr(z, 'shape', ()))}")
        if not isinstance(c, torch.Tensor) or c.shape != (z.shape[0], self.c_dim):
            raise ValueError(f"c must be one-hot classes of shape ({z.shape[0]}, {self.c_dim}), got "
                             f"{tuple(getattr(c, 'shape', ())) if isinstance(c, torch.Tensor) else type(c).__name__}")
        zs = torch.split(z, self.chunk, dim=1)
        shared = self.shared(c.to(z.dtype))
        h = self.linear(zs[0]).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, torch.cat([shared, zs[i + 1]], dim=1))
            if str(h.shape[-1]) in self.attention:
                h = self.attention[str(h.shape[-1])](h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))

    def regularized_weights(self) -> list[torch.Tensor]:
        """The weights the orthogonal regulariser acts on: every parameter with >= 2 dimensions except the
        shared embedding (BigGAN-PyTorch's blacklist); with spectral norm these are the raw weights."""
        shared = {id(p) for p in self.shared.parameters()}
        return [p for p in self.parameters() if p.dim() >= 2 and id(p) not in shared]

    def orthogonal_regularizer(self, *inputs, generator: torch.Generator | None = None) -> torch.Tensor:
        """:func:`orthogonal_regularization` of :meth:`regularized_weights` with ``ortho_beta``: a
        0-d tensor. The signature is GANTrainer's ``g_regularizer(z[, c], generator=...)``; the
        penalty depends on the weights only, so its inputs are ignored."""
        return orthogonal_regularization(self.regularized_weights(), self.ortho_beta)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, *, truncation: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples for ``labels`` ((B,) ints in [0, c_dim)) with z ~ N(0, I) truncated to
        [-truncation, truncation] (None: no truncation), in the module's current mode."""
        p = next(self.parameters())
        c = labels_to_onehot(labels, self.c_dim, device=p.device, dtype=p.dtype)
        z = truncated_normal(c.shape[0], self.latent_dim, truncation, generator=generator, device=p.device,
                             dtype=p.dtype)
        return self(z, c)

    @torch.no_grad()
    def accumulate_standing_stats(self, batches: int = 16, batch_size: int = 64, *,
                                  generator: torch.Generator | None = None) -> None:
        """BigGAN's "standing statistics": reset every batch norm's running mean and variance and
        replace them by their average over ``batches`` forwards of ``batch_size`` random z and
        classes in train mode (momentum None: a cumulative average), so that eval-mode sampling uses
        statistics of these very weights (an EMA copy's otherwise come from the trained G)."""
        batches, batch_size = _positive_int("batches", batches), _positive_int("batch_size", batch_size)
        p = next(self.parameters())
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        was_training = self.training
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        self.train()
        try:
            for _ in range(batches):
                labels = torch.randint(0, self.c_dim, (batch_size,), generator=generator, device=p.device)
                self.generate(labels, generator=generator)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            self.train(was_training)
