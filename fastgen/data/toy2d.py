"""Two-dimensional toy data sets for GANs, generated on the fly (nothing is downloaded).

Every sampler returns float32 samples of shape (n, 2) and draws all its randomness from the
``torch.Generator`` it is given (torch's default generator of the device when None), so the same
generator state gives the same samples. Samples are made on the generator's device (CPU for None).

Gaussian mixtures, the mode-collapse benchmarks (each component equally likely, isotropic):

    ring_of_gaussians   K = 8 modes evenly spaced on a circle of radius 2, std 0.02: the setting
                        of Metz et al. 2017 (unrolled GAN) and Srivastava et al. 2017 (VEEGAN).
                        Lin et al. 2018 (PacGAN) use radius 1, std 0.01 (their code's config):
                        ``ring_of_gaussians(n, radius=1.0, std=0.01)``.
    grid_of_gaussians   K = 25 modes on the 5 x 5 grid {-4, -2, 0, 2, 4}^2, std 0.05: the setting
                        of VEEGAN and PacGAN (evaluated on 2500 generator samples).

:func:`ring_mixture` / :func:`grid_mixture` return the :class:`Mixture` itself (centres and std),
which :func:`fastgen.gan.metrics.mode_coverage` needs to score samples.

Manifolds, written from their definitions (no scikit-learn):

    swiss_roll   scikit-learn's swiss roll curve (x, z) = t (cos t, sin t), t = 1.5 pi (1 + 2u),
                 u ~ U[0, 1), divided by 7.5 as in Gulrajani et al. 2017's toy experiments
                 (so it fits in about [-1.3, 1.7] x [-1.5, 1.9]), plus N(0, noise^2) per coordinate.
    two_moons    scikit-learn's two interleaving half circles, each with probability 1/2: the upper
                 (cos a, sin a) and the lower (1 - cos a, 1/2 - sin a), a ~ U[0, pi), plus
                 N(0, noise^2) per coordinate.

:data:`TOY_DATASETS` maps a name to its sampler, :func:`toy_batches` streams batches forever.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable, Iterator

import torch

from .._validate import check_int

__all__ = ["Mixture", "ring_mixture", "grid_mixture", "ring_of_gaussians", "grid_of_gaussians", "swiss_roll",
           "two_moons", "TOY_DATASETS", "TOY_MIXTURES", "toy_batches"]

# The swiss roll's scale: Gulrajani et al. 2017 divide scikit-learn's roll (radius up to 4.5 pi) by 7.5.
_SWISS_ROLL_SCALE = 7.5


def _non_negative(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def _device_of(generator: torch.Generator | None) -> torch.device:
    if generator is None:
        return torch.device("cpu")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator.device


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare the centre tensors elementwise
class Mixture:
    """An equal-weight mixture of isotropic Gaussians in the plane.

    Attributes:
        centers: (K, 2) float32 tensor of the component means, K >= 1.
        std: the standard deviation of every component along each axis, a number >= 0.
    """

    centers: torch.Tensor
    std: float

    def __post_init__(self):
        centers = self.centers
        if not isinstance(centers, torch.Tensor) or not centers.dtype.is_floating_point:
            got = centers.dtype if isinstance(centers, torch.Tensor) else type(centers).__name__
            raise TypeError(f"centers must be a floating tensor, got {got}")
        if self.centers.dim() != 2 or self.centers.shape[1] != 2 or self.centers.shape[0] < 1:
            raise ValueError(f"centers must have shape (K, 2) with K >= 1, got {tuple(self.centers.shape)}")
        # Frozen dataclass: normalise the fields through object.__setattr__.
        object.__setattr__(self, "centers", self.centers.to(torch.float32))
        object.__setattr__(self, "std", _non_negative("std", self.std))

    @property
    def num_modes(self) -> int:
        return self.centers.shape[0]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples (n, 2) float32: a component drawn uniformly (randint), then its Gaussian noise (randn)."""
        n = check_int("n", n, 0)
        device = _device_of(generator)
        modes = torch.randint(self.num_modes, (n,), generator=generator, device=device)
        noise = torch.randn(n, 2, generator=generator, device=device)
        return self.centers.to(device)[modes] + self.std * noise


def ring_mixture(*, modes: int = 8, radius: float = 2.0, std: float = 0.02) -> Mixture:
    """``modes`` components centred at radius (cos 2 pi k / modes, sin 2 pi k / modes), k = 0 .. modes - 1."""
    modes = check_int("modes", modes, 1)
    radius = _non_negative("radius", radius, positive=True)
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    centers = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return Mixture(centers.to(torch.float32), std)


def grid_mixture(*, side: int = 5, spacing: float = 2.0, std: float = 0.05) -> Mixture:
    """side^2 components on a square grid centred at the origin: spacing * (i - (side - 1) / 2) per axis.

    The defaults give the centres {-4, -2, 0, 2, 4}^2 (row-major: x varies slowest).
    """
    side = check_int("side", side, 1)
    spacing = _non_negative("spacing", spacing, positive=True)
    axis = spacing * (torch.arange(side, dtype=torch.float64) - (side - 1) / 2)
    centers = torch.cartesian_prod(axis, axis)
    return Mixture(centers.to(torch.float32), std)


def ring_of_gaussians(n: int, *, modes: int = 8, radius: float = 2.0, std: float = 0.02,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples (n, 2) float32 of :func:`ring_mixture` (defaults: Metz et al. 2017, VEEGAN)."""
    return ring_mixture(modes=modes, radius=radius, std=std).sample(n, generator=generator)


def grid_of_gaussians(n: int, *, side: int = 5, spacing: float = 2.0, std: float = 0.05,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples (n, 2) float32 of :func:`grid_mixture` (defaults: VEEGAN, PacGAN)."""
    return grid_mixture(side=side, spacing=spacing, std=std).sample(n, generator=generator)


def swiss_roll(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples (n, 2) float32 of the 2-D swiss roll t (cos t, sin t) / 7.5, t ~ U[1.5 pi, 4.5 pi), + noise.

    Draws u (rand, (n,)) then the noise (randn, (n, 2)); ``noise`` is the std of the Gaussian
    added to each coordinate after scaling.
    """
    n = check_int("n", n, 0)
    noise = _non_negative("noise", noise)
    device = _device_of(generator)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, device=device))
    curve = t[:, None] * torch.stack([t.cos(), t.sin()], dim=1) / _SWISS_ROLL_SCALE
    return curve + noise * torch.randn(n, 2, generator=generator, device=device)


def two_moons(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples (n, 2) float32 of two interleaving half circles of radius 1, each moon with probability 1/2.

    Upper moon (cos a, sin a), lower moon (1 - cos a, 1/2 - sin a), a ~ U[0, pi). Draws the moon
    (randint, (n,)), then a (rand, (n,)), then the noise (randn, (n, 2)) of std ``noise``.
    """
    n = check_int("n", n, 0)
    noise = _non_negative("noise", noise)
    device = _device_of(generator)
    lower = torch.randint(2, (n, 1), generator=generator, device=device).to(torch.bool)
    a = math.pi * torch.rand(n, generator=generator, device=device)
    upper_moon = torch.stack([a.cos(), a.sin()], dim=1)
    lower_moon = torch.stack([1 - a.cos(), 0.5 - a.sin()], dim=1)
    return torch.where(lower, lower_moon, upper_moon) + noise * torch.randn(n, 2, generator=generator, device=device)


TOY_DATASETS: dict[str, Callable[..., torch.Tensor]] = {
    "ring": ring_of_gaussians,
    "grid": grid_of_gaussians,
    "swiss_roll": swiss_roll,
    "two_moons": two_moons,
}

# The data sets with known modes, name -> the Mixture factory taking the sampler's parameters.
TOY_MIXTURES: dict[str, Callable[..., Mixture]] = {"ring": ring_mixture, "grid": grid_mixture}


def toy_batches(name: str, batch_size: int, *, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", **params) -> Iterator[torch.Tensor]:
    """An endless iterator of (batch_size, 2) float32 batches of :data:`TOY_DATASETS` ``[name]`` on ``device``.

    Each batch is ``TOY_DATASETS[name](batch_size, generator=generator, **params)`` (drawn on the
    generator's device, then moved to ``device``), so the stream is reproducible from the
    generator's state: to resume it, save ``generator.get_state()`` and restore it.
    ``params`` (e.g. ``modes=4``) are checked against the sampler's signature here; their values
    are checked at the first batch.
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"name must be one of {tuple(TOY_DATASETS)}, got {name!r}")
    sampler = TOY_DATASETS[name]
    batch_size = check_int("batch_size", batch_size, 1)
    _device_of(generator)
    device = torch.device(device)
    try:
        inspect.signature(sampler).bind(batch_size, generator=generator, **params)
    except TypeError as exc:
        raise TypeError(f"toy data set {name!r} ({sampler.__name__}) does not take these parameters: {exc}") from None

    def stream() -> Iterator[torch.Tensor]:
        while True:
            yield sampler(batch_size, generator=generator, **params).to(device)

    return stream()
