"""The variational autoencoder (Kingma & Welling 2014), its beta variant and the IWAE bound.

    q(z | x) = N(mu(x), diag exp(logvar(x))),   p(z) = N(0, I),   p(x | z) a :mod:`.likelihoods` object

    ELBO(x)     = E_q[log p(x | z)] - KL(q(z | x) || p(z))         one reparameterised sample z = mu + sigma * eps,
                                                                   the KL in closed form (:func:`fastgen.divergences.kl_normal`)
    loss        = mean over the batch of -E_q[log p(x | z)] + beta * KL   (beta-VAE, Higgins et al. 2017)
    IWAE_k(x)   = logsumexp_i [log p(x | z_i) + log p(z_i) - log q(z_i | x)] - log k,   z_i ~ q(z | x)

IWAE_k (Burda et al. 2016) is a lower bound on log p(x) that tightens as k grows (IWAE_1 is the
single-sample ELBO, with log p(z) - log q(z | x) in place of the closed-form KL), the usual
log-likelihood estimate of a VAE with k in the thousands. All values are per example, in nats.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._validate import check_int
from ..divergences import kl_normal
from .autoencoder import _preset
from .likelihoods import DiscretizedLogistic, make_likelihood

__all__ = ["VAE"]

_LOG_2PI = math.log(2 * math.pi)


def _check_beta(beta: object) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < math.inf:
        raise ValueError(f"beta must be a finite number >= 0 (1 for the ELBO), got {beta!r}")
    return float(beta)


class VAE(nn.Module):
    """A VAE with a diagonal Gaussian posterior and a standard normal prior.

    Args:
        encoder: (B, C, H, W) -> (B, 2 * latent_dim): the posterior's means, then its log-variances.
        decoder: (B, latent_dim) -> the likelihood's parameters (B, params_per_channel * C, H, W).
        latent_dim: an int >= 1.
        likelihood: a :mod:`fastgen.models.likelihoods` object or name; x must be in its range
            ([0, 1] for Bernoulli, [-1, 1] for the discretised logistic).
        beta: the KL weight of :meth:`forward`'s loss, a number >= 0 (1: the ELBO).

    Presets: :meth:`digits` (8x8x1) and :meth:`rgb32` (32x32x3).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood="bernoulli",
                 beta: float = 1.0):
        super().__init__()
        for name, m in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.likelihood = make_likelihood(likelihood)
        self.beta = _check_beta(beta)

    @classmethod
    def digits(cls, latent_dim: int = 16, likelihood=None, beta: float = 1.0) -> "VAE":
        """For the 8x8x1 digits of :func:`fastgen.data.load_digits` with normalize="[-1,1]": by default a
        discretised logistic over their 17 levels (x = k / 8 - 1, k = 0 .. 16)."""
        lik = make_likelihood(DiscretizedLogistic(17) if likelihood is None else likelihood)
        return cls(*_preset("digits", latent_dim, 2 * latent_dim, lik.params_per_channel), latent_dim, lik, beta)

    @classmethod
    def rgb32(cls, latent_dim: int = 128, likelihood=None, beta: float = 1.0) -> "VAE":
        """For 32x32 RGB 8-bit images scaled to [-1, 1]: by default a 256-bin discretised logistic."""
        lik = make_likelihood(DiscretizedLogistic(256) if likelihood is None else likelihood)
        return cls(*_preset("rgb32", latent_dim, 2 * latent_dim, lik.params_per_channel), latent_dim, lik, beta)

    # --- pieces ---------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, latent_dim), of q(z | x)."""
        h = self.encoder(x)
        if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != 2 * self.latent_dim:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"the encoder must return (B, 2 * latent_dim) = (B, {2 * self.latent_dim}) "
                             f"(means, then log-variances), got {got}")
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters for latents z (B, latent_dim)."""
        return self.decoder(z)

    @staticmethod
    def _noise(mu: torch.Tensor, generator: torch.Generator | None, k: int | None = None) -> torch.Tensor:
        shape = mu.shape if k is None else (k, *mu.shape)
        return torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)

    # --- objectives -----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One reparameterised sample per example.

        Args:
            x: (B, C, H, W) floating, in the likelihood's range.
            generator: a torch.Generator on x's device for eps (None: torch's default one).

        Returns a dict of tensors: "loss" (0-d: mean over the batch of -log p(x | z) + beta * KL, to
        minimise), and per example (B,) in nats: "log_px_z" (log p(x | z)), "kl" (closed form),
        "elbo" (log_px_z - kl, the beta = 1 bound); "reconstruction" (the likelihood's mean at z,
        shaped like x) and "z" (B, latent_dim).
        """
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * self._noise(mu, generator)
        params = self.decode(z)
        log_px_z = self.likelihood.log_prob(params, x)
        kl = kl_normal(mu, logvar)
        loss = (-log_px_z + self.beta * kl).mean()
        return {"loss": loss, "log_px_z": log_px_z, "kl": kl, "elbo": log_px_z - kl,
                "reconstruction": self.likelihood.mean(params), "z": z}

    def elbo(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) the ELBO in nats with one sample of z and the closed-form KL (beta is not applied)."""
        return self.forward(x, generator=generator)["elbo"]

    def iwae_bound(self, x: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
                   max_batch: int = 4096) -> torch.Tensor:
        """(B,) the importance-weighted bound IWAE_k(x) <= log p(x), in nats (float32 at least).

        Args:
            x: (B, C, H, W) floating, in the likelihood's range.
            k: importance samples per example, an int >= 1.
            generator: for the k x B draws of eps (None: torch's default generator); samples are drawn
                example-slice by example-slice and chunk by chunk, so the values depend on max_batch.
            max_batch: decode at most this many (sample, example) pairs at once, an int >= 1: the
                k samples are processed in chunks and merged with a running logsumexp, so memory is
                that of one decoder pass over max_batch images whatever k is.

        Differentiable (an IWAE training objective); wrap in ``torch.no_grad()`` to evaluate.
        """
        k = check_int("k", k, 1, " (importance samples per example)")
        max_batch = check_int("max_batch", max_batch, 1)
        mu_all, logvar_all = self.encode(x)
        out = []
        for start in range(0, x.shape[0], max_batch):
            xs, mu, logvar = (t[start:start + max_batch] for t in (x, mu_all, logvar_all))
            b = xs.shape[0]
            chunk = max(1, max_batch // b)
            std = torch.exp(0.5 * logvar)
            acc = None
            for done in range(0, k, chunk):
                c = min(chunk, k - done)
                eps = self._noise(mu, generator, c)                         # (c, b, L)
                z = mu + std * eps
                params = self.decode(z.reshape(c * b, -1))
                x_rep = xs.unsqueeze(0).expand(c, *xs.shape).reshape(c * b, *xs.shape[1:])
                log_px_z = self.likelihood.log_prob(params, x_rep).view(c, b)
                # log p(z) - log q(z | x): the 2 pi terms cancel; with z = mu + std * eps,
                # log q = sum -0.5 (eps^2 + logvar + log 2 pi) exactly.
                log_w = log_px_z + (0.5 * (eps.square() - z.square() + logvar)).sum(dim=2).to(log_px_z.dtype)
                part = torch.logsumexp(log_w, dim=0)
                acc = part if acc is None else torch.logaddexp(acc, part)
            out.append(acc - math.log(k))
        return torch.cat(out)

    # --- generation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images: the likelihood's mean at z ~ N(0, I), on the parameters' device and dtype."""
        n = check_int("n", n, 1)
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean at z = mu(x) (the posterior mean), shaped like x."""
        return self.likelihood.mean(self.decode(self.encode(x)[0]))
