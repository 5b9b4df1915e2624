"""BigGAN's layers (Brock et al. 2019, "Large scale GAN training for high fidelity natural image synthesis"):
class-conditional batch norm, the SAGAN self-attention block, the truncation trick and the
orthogonal regulariser.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...nn import attention

__all__ = ["ConditionalBatchNorm2d", "SelfAttention", "truncate_latent", "truncated_normal",
           "orthogonal_regularization", "labels_to_onehot"]


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose per-channel gain and bias are linear functions of a conditioning vector.

    forward(x (B, C, H, W), y (B, cond_dim)) = BN(x) * (1 + y @ W_gain^T) + y @ W_bias^T, BN without
    an affine of its own (running statistics kept as nn.BatchNorm2d does). BigGAN's y is the shared
    class embedding concatenated with this block's chunk of z; the two linear maps have no bias
    (the "1 +" makes the gain start at 1 for y = 0) and are spectrally normalised with the rest of G.
    """

    def __init__(self, channels: int, cond_dim: int, *, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=False)
        self.gain = nn.Linear(cond_dim, channels, bias=False)
        self.bias = nn.Linear(cond_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(y)
        bias = self.bias(y)
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN's self-attention block (Zhang et al. 2019), as BigGAN places it at one resolution.

    theta = 1x1 conv to C/8 (queries, every position), phi = 1x1 conv to C/8 and g = 1x1 conv to C/2,
    both max-pooled 2x2 (keys and values on a quarter of the positions), o = 1x1 conv C/2 -> C:

        out = x + gamma * o(softmax(theta^T phi) g),    gamma a scalar initialised to 0,

    so the block starts as the identity. The dot products are unscaled as in SAGAN; the attention
    itself is :func:`fastgen.nn.attention` (the package's one attention op, which takes one head width
    for q, k and v and scales by 1 / sqrt(width)): q and k are zero-padded from C/8 to C/2 (which
    leaves every q.k unchanged) and q is multiplied by sqrt(C/2) to undo the op's scaling.
    Needs C >= 8 and even H, W. x (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 8:
            raise ValueError(f"channels must be >= 8 (queries and keys have channels // 8), got {channels}")
        self.channels = channels
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.o = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        dv = c // 2
        q = self.theta(x).flatten(2).transpose(1, 2)                           # (B, HW, C/8)
        k = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)            # (B, HW/4, C/8)
        v = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)              # (B, HW/4, C/2)
        pad = dv - q.shape[-1]
        q = F.pad(q, (0, pad)) * math.sqrt(dv)
        k = F.pad(k, (0, pad))
        out = attention(q[:, None], k[:, None], v[:, None])[:, 0]             # (B, HW, C/2)
        out = out.transpose(1, 2).reshape(b, dv, h, w)
        return x + self.gamma * self.o(out)


def truncate_latent(z: torch.Tensor, threshold: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """BigGAN's truncation trick: every entry of ``z`` with |z| > threshold is redrawn from N(0, 1)
    (from ``generator``) until it lies in [-threshold, threshold]; the others are kept exactly.

    The result is distributed as a normal truncated to [-threshold, threshold] when z ~ N(0, I).
    z: floating tensor of any shape (a new tensor is returned); threshold: a number > 0 (smaller:
    more fidelity, less variety; rounds of redrawing grow as 1 / P(|z| <= threshold)).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0 \
            or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    if not isinstance(z, torch.Tensor) or not z.dtype.is_floating_point:
        got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise TypeError(f"z must be a floating tensor, got {got}")
    z = z.clone()
    outside = z.abs() > threshold
    while bool(outside.any()):
        n = int(outside.sum())
        z[outside] = torch.randn(n, generator=generator, device=z.device, dtype=z.dtype)
        outside = z.abs() > threshold
    return z


def truncated_normal(n: int, dim: int, threshold: float | None, *, generator: torch.Generator | None = None,
                     device=None, dtype=torch.float32) -> torch.Tensor:
    """(n, dim) latents: N(0, I) when threshold is None, else truncated to [-threshold, threshold]
    (:func:`truncate_latent`)."""
    z = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    return z if threshold is None else truncate_latent(z, threshold, generator=generator)


def orthogonal_regularization(weights, beta: float = 1e-4) -> torch.Tensor:
    """BigGAN's orthogonal regulariser: beta * sum_W || W W^T * (1 - I) ||_F^2, a 0-d tensor.

    Each W is a weight reshaped to (out, -1) (a conv's filters as rows), so W W^T is the Gram matrix
    of its filters and only their pairwise dot products are penalised, not their norms (Brock et al.
    2019, section 3.1, which writes the same for W^T W with W (in, out)). The official BigGAN-PyTorch
    adds 2 beta (W W^T * (1 - I)) W to the gradient, i.e. half the gradient of this formula: its beta
    of 1e-4 is this one's 5e-5.

    weights: an iterable of tensors with >= 2 dimensions (e.g. a generator's weight parameters).
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    total = None
    for w in weights:
        if w.dim() < 2:
            raise ValueError(f"every weight must have >= 2 dimensions, got shape {tuple(w.shape)}")
        w = w.reshape(w.shape[0], -1)
        gram = w @ w.t()
        term = (gram - torch.diag_embed(torch.diagonal(gram))).square().sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("weights is empty: nothing to regularise")
    return beta * total


def labels_to_onehot(labels: object, num_classes: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B,) integer class indices in [0, num_classes) -> (B, num_classes) one-hot; a clear error otherwise."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or labels.dim() != 1:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"labels must be a 1-D integer tensor of class indices, got {got}")
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    return F.one_hot(labels.long(), num_classes).to(device=device if device is not None else labels.device, dtype=dtype)
