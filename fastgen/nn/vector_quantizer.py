"""Vector quantisation layer of VQ-VAE (van den Oord et al. 2017), over :func:`fastgen.ops.vq_nearest`.

Each feature vector z (the channel dimension, dim 1, of an (N, D), (B, D, L) or (B, D, H, W)
input) is replaced by its nearest code e_k. The forward value is e_k; the gradient passes
straight through to z (z_q = z + sg[e_k - z]). Loss, as in the paper's eq. 3:

    loss = ||sg[z] - e||^2 + beta * ||z - sg[e]||^2          (means over all elements)

the commitment weight beta on the encoder term. ``legacy=True`` reproduces diffusers'
``VectorQuantizer(legacy=True)`` (its default), which puts beta on the codebook term instead:
``||sg[e] - z||^2 + beta * ||e - sg[z]||^2``. With ``ema=True`` the codebook is not learned by
gradient: the loss is only the commitment term and, in training mode, the codebook follows
exponential moving averages of the assigned vectors (the paper's appendix A.1):

    N_k <- decay N_k + (1 - decay) n_k,      m_k <- decay m_k + (1 - decay) sum_{i: k_i = k} z_i
    e_k  = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace smoothing)

(counts by ``torch.bincount``, sums by ``index_add_``, float32). ``kmeans_init`` runs k-means
(``kmeans_iters`` Lloyd steps, nearest codes by vq_nearest) on the first training batch to place
the codes. ``restart_after`` > 0 replaces any code unused for that many consecutive training
steps by a random encoder output of the current batch. ``cosine=True`` l2-normalises the inputs
and the codes before the lookup and the loss (Yu et al. 2022, "ViT-VQGAN"), so distances are
cosine distances. Statistics of each call: perplexity exp(H(p)) of the batch's code
frequencies p (K for uniform use, 1 for a single code) and the fraction of codes used.
A data-parallel caller must all-reduce the EMA statistics itself; this layer does not.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _validate
from ..ops.vq_nearest import vq_nearest


class VQOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns.

    quantized:  the input's shape and dtype: the codes in the forward, identity gradient to z
    loss:       float32 scalar: codebook + beta * commitment (commitment only with EMA)
    indices:    int64, the input's shape without the channel dimension
    perplexity: float32 scalar, exp of the entropy of this batch's code frequencies
    usage:      float32 scalar, fraction of the K codes used at least once in this batch
    """

    quantized: torch.Tensor
    loss: torch.Tensor
    indices: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def _channels_last(z: torch.Tensor) -> torch.Tensor:
    """(B, D, *S) -> (B * prod(S), D); (N, D) unchanged."""
    if z.dim() == 2:
        return z
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _channels_first(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_channels_last` for a tensor shaped like ``like``."""
    if like.dim() == 2:
        return flat
    shape = (like.shape[0],) + tuple(like.shape[2:]) + (flat.shape[-1],)
    return flat.reshape(shape).movedim(-1, 1)


def code_statistics(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, fraction of codes used) of int64 ``indices`` among ``num_codes``, float32 scalars."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()  # 0 log 0 = 0
    return entropy.exp(), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient (see the module docstring).

    Args:
        num_codes: K >= 1.
        dim: D, the code size (the input's channel count).
        beta: commitment weight (0.25 in the paper).
        legacy: put beta on the codebook term instead (diffusers' legacy=True); not with ``ema``.
        ema: update the codebook by moving averages instead of by gradient.
        decay: EMA decay in [0, 1).
        eps: Laplace smoothing of the EMA counts (> 0).
        kmeans_init: initialise the codes by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that k-means.
        restart_after: replace codes unused for this many training steps (0: never).
        cosine: quantise l2-normalised vectors with l2-normalised codes.
        impl: implementation of the nearest-code search (see :func:`fastgen.ops.vq_nearest`).

    Buffers: ``initialized`` (k-means done), ``ema_counts`` (K,), ``ema_sums`` (K, D),
    ``unused_steps`` (K,) int64. All float state is float32.
    """

    def __init__(self, num_codes: int, dim: int, *, beta: float = 0.25, legacy: bool = False, ema: bool = False,
                 decay: float = 0.99, eps: float = 1e-5, kmeans_init: bool = False, kmeans_iters: int = 10,
                 restart_after: int = 0, cosine: bool = False, impl: str = "auto"):
        super().__init__()
        self.num_codes = _validate.check_int("num_codes", num_codes, 1)
        self.dim = _validate.check_int("dim", dim, 1)
        self.kmeans_iters = _validate.check_int("kmeans_iters", kmeans_iters, 1)
        self.restart_after = _validate.check_int("restart_after", restart_after, 0)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if legacy and ema:
            raise ValueError("legacy=True weights the codebook loss term, which ema=True does not have")
        self.beta, self.legacy, self.ema, self.decay, self.eps = float(beta), legacy, ema, float(decay), float(eps)
        self.kmeans_init, self.cosine, self.impl = kmeans_init, cosine, impl
        # uniform(-1/K, 1/K) as diffusers' and the reference implementations initialise the embedding
        self.codebook = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes),
                                     requires_grad=not ema)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("ema_counts", torch.ones(num_codes))
        self.register_buffer("ema_sums", self.codebook.detach().clone())
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, legacy={self.legacy}, ema={self.ema}, "
                f"cosine={self.cosine}, restart_after={self.restart_after}")

    def codes(self) -> torch.Tensor:
        """The (K, D) codes as used for lookup (l2-normalised when ``cosine``)."""
        return F.normalize(self.codebook, dim=1) if self.cosine else self.codebook

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of int64 ``indices`` (B, *S) as a (B, D, *S) map ((N,) -> (N, D))."""
        flat = F.embedding(indices.reshape(-1), self.codes())
        if indices.dim() == 1:
            return flat
        return flat.reshape(tuple(indices.shape) + (self.dim,)).movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> VQOutput:
        """Quantise ``z``: (N, D) or (B, D, *spatial) float; see :class:`VQOutput`."""
        z = _validate.check_floating("z", z, min_dim=2)
        if z.shape[1] != self.dim:
            raise ValueError(f"z must have {self.dim} channels in dim 1, got shape {tuple(z.shape)}")
        flat = _channels_last(z)
        if self.cosine:
            flat = F.normalize(flat, dim=1)
        if self.training and not bool(self.initialized):
            self._kmeans(flat.detach().float())
        codes = self.codes()
        indices = vq_nearest(flat.detach(), codes.detach().to(flat.dtype), impl=self.impl)
        if self.training:
            self._update(flat.detach().float(), indices)
            codes = self.codes()  # EMA and restarts change the codes: the output uses the new ones
        z_q = F.embedding(indices, codes).to(flat.dtype)
        zf, qf = flat.float(), z_q.float()
        commitment = F.mse_loss(zf, qf.detach())
        if self.ema:
            loss = self.beta * commitment
        else:
            codebook_term = F.mse_loss(qf, zf.detach())
            loss = (commitment + self.beta * codebook_term) if self.legacy else (codebook_term + self.beta * commitment)
        quantized = flat + (z_q - flat).detach()  # straight-through: d quantized / d z = identity
        perplexity, usage = code_statistics(indices, self.num_codes)
        index_shape = (z.shape[0],) + tuple(z.shape[2:]) if z.dim() > 2 else (z.shape[0],)
        return VQOutput(_channels_first(quantized, z), loss, indices.reshape(index_shape), perplexity, usage)

    @torch.no_grad()
    def _kmeans(self, flat: torch.Tensor) -> None:
        """Lloyd's k-means on the rows of ``flat`` (float32 (N, D)) into the codebook; empty clusters keep
        their previous centre. Seeds: K rows drawn without replacement (with it when N < K)."""
        n = flat.shape[0]
        pick = torch.randperm(n, device=flat.device)[:self.num_codes] if n >= self.num_codes else \
            torch.randint(0, n, (self.num_codes,), device=flat.device)
        centres = flat[pick].clone()
        counts = torch.zeros(self.num_codes, device=flat.device)
        for _ in range(self.kmeans_iters):
            assign = vq_nearest(flat, centres, impl=self.impl)
            counts = torch.bincount(assign, minlength=self.num_codes).float()
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], centres)
        self.codebook.copy_(centres)
        self.ema_counts.copy_(counts.clamp_min(1.0))
        self.ema_sums.copy_(centres * self.ema_counts[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """One training step's EMA update and dead-code restart, from float32 ``flat`` (N, D)."""
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        if self.ema:
            sums = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, indices, flat)
            self.ema_counts.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
            self.ema_sums.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            total = self.ema_counts.sum()
            smoothed = (self.ema_counts + self.eps) / (total + self.num_codes * self.eps) * total
            self.codebook.copy_(self.ema_sums / smoothed[:, None])
        if self.restart_after > 0:
            self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
            dead = self.unused_steps >= self.restart_after
            n_dead = int(dead.sum())
            if n_dead:
                fresh = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)]
                self.codebook[dead] = fresh
                self.ema_sums[dead] = fresh  # with a count of 1, the next EMA step starts from the fresh vector
                self.ema_counts[dead] = 1.0
                self.unused_steps[dead] = 0
