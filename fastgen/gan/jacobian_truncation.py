"""Jacobian-based truncation (JBT): sample a generator where it does not stretch its latent space.

A generator that is continuous on a connected latent space (a Gaussian) cannot put all of its mass
on disconnected modes: the latents between two modes' preimages must map to points between the
modes (Khayatkhoei et al. 2018, "Disconnected manifold learning for generative adversarial
networks"; Tanielian et al. 2020, "Learning disconnected manifolds: a no GAN's land", ICML, who
prove an upper bound on such a generator's precision from that low-quality region). To carry little
mass across a gap, G must stretch a thin latent region over it, so its Jacobian dG/dz is large
there; Tanielian et al. derive from this a rejection sampler, Jacobian-based truncation (JBT): draw
more latents than needed and keep the samples whose Jacobian has the smallest Frobenius norm.

    jacobian_norms(G, z)                                 -> (B,) ||dG/dz||_F per sample
    jacobian_truncated_sample(G, n, keep, latent_dim=d)  -> TruncatedSamples: the n kept of ceil(n / keep)

It needs nothing but G (no discriminator, no data): on the 2-D mixtures it removes the samples in
transit between modes (benchmarks/run_gan_precision_ablation.py, benchmarks/results/README.md).
The Jacobian is exact: ``latent_dim`` forward-mode products (torch.func.jvp), each about the cost of
a forward pass, so it suits small latents; G must treat samples independently (eval mode, no batch
statistics), which is how it is called here.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .._validate import check_int

__all__ = ["TruncatedSamples", "jacobian_norms", "jacobian_truncated_sample"]


@dataclasses.dataclass(eq=False)
class TruncatedSamples:
    """The result of :func:`jacobian_truncated_sample`.

    Attributes:
        samples: (n, ...) the kept samples, in the order their latents were drawn.
        latents: (n, latent_dim) their latents.
        norms: (n,) float32, their Jacobians' Frobenius norms.
        threshold: the largest kept norm (a Python float).
        candidates: how many latents were drawn (ceil(n / keep)); ``n / candidates`` is the acceptance rate.
    """

    samples: torch.Tensor
    latents: torch.Tensor
    norms: torch.Tensor
    threshold: float
    candidates: int

    @property
    def acceptance_rate(self) -> float:
        return self.samples.shape[0] / self.candidates


def jacobian_norms(generator, z: torch.Tensor) -> torch.Tensor:
    """||dG(z_b)/dz_b||_F for every row b of ``z`` (B, latent_dim): a (B,) float32 tensor.

    One forward-mode product per latent coordinate, with the tangent e_i in every row: since G
    treats the samples of a batch independently, row b of the product is column i of sample b's
    Jacobian. ``generator``: a callable (B, latent_dim) -> (B, ...), e.g. a G in eval mode.
    """
    if not isinstance(z, torch.Tensor) or not z.dtype.is_floating_point or z.dim() != 2 or z.shape[0] == 0:
        got = f"{z.dtype} {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z must be a floating tensor of shape (B, latent_dim) with B >= 1, got {got}")
    if not callable(generator):
        raise TypeError(f"generator must be a callable z -> samples (an nn.Module), got {type(generator).__name__}")
    squared = torch.zeros(z.shape[0], dtype=torch.float32, device=z.device)
    for i in range(z.shape[1]):
        tangent = torch.zeros_like(z)
        tangent[:, i] = 1
        _, column = torch.func.jvp(generator, (z,), (tangent,))
        if column.shape[0] != z.shape[0]:
            raise ValueError(f"generator must return one sample per latent (batch {z.shape[0]} first), "
                             f"got shape {tuple(column.shape)}")
        squared += column.detach().float().reshape(z.shape[0], -1).square().sum(dim=1)
    return squared.sqrt()


@torch.no_grad()
def jacobian_truncated_sample(generator, n: int, keep: float, *, latent_dim: int | None = None,
                              rng: torch.Generator | None = None, device: torch.device | str | None = None,
                              dtype: torch.dtype | None = None, chunk: int = 8192) -> TruncatedSamples:
    """n samples of ``generator`` by Jacobian-based truncation (Tanielian et al. 2020).

    Draws m = ceil(n / keep) latents z ~ N(0, I) from ``rng`` (a torch.Generator on ``device``;
    None: torch's default one), computes :func:`jacobian_norms` in chunks of ``chunk`` rows, and
    keeps the n with the smallest norms (ties: the earlier draw), returned in draw order.

    Args:
        generator: a callable (B, latent_dim) -> (B, ...) that treats rows independently; an nn.Module
            is put in eval mode for the call (and restored), as :meth:`fastgen.gan.GANTrainer.sample` does.
        n: samples to return, an int >= 1.
        keep: the fraction of candidates kept, in (0, 1] (1: plain sampling of n latents).
        latent_dim: size of z; None: ``generator.latent_dim``.
        device, dtype: of the latents; None: those of the generator's parameters (else the CPU, float32).
        chunk: latents per Jacobian / forward call, an int >= 1 (bounds the memory).
    """
    n = check_int("n", n, 1)
    chunk = check_int("chunk", chunk, 1)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    latent_dim = getattr(generator, "latent_dim", None) if latent_dim is None else latent_dim
    latent_dim = check_int("latent_dim", latent_dim, 1) if latent_dim is not None else None
    if latent_dim is None:
        raise ValueError("latent_dim must be given for a generator without an int attribute latent_dim")
    param = next(generator.parameters(), None) if isinstance(generator, torch.nn.Module) else None
    device = (param.device if param is not None else torch.device("cpu")) if device is None else device
    dtype = (param.dtype if param is not None else torch.float32) if dtype is None else dtype
    candidates = math.ceil(n / keep - 1e-9)  # 1e-9: an exact ratio that floats round up (21 / 0.7 = 30.000000000000004)
    z = torch.randn(candidates, latent_dim, generator=rng, device=device, dtype=dtype)
    was_training = isinstance(generator, torch.nn.Module) and generator.training
    if isinstance(generator, torch.nn.Module):
        generator.eval()
    try:
        norms = torch.cat([jacobian_norms(generator, part) for part in z.split(chunk)])
        # stable sort: equal norms keep draw order, so the result does not depend on the sort's algorithm
        kept = torch.sort(torch.sort(norms, stable=True).indices[:n]).values
        samples = torch.cat([generator(part) for part in z[kept].split(chunk)])
    finally:
        if was_training:
            generator.train()
    return TruncatedSamples(samples=samples, latents=z[kept], norms=norms[kept], threshold=float(norms[kept].max()),
                            candidates=candidates)
