"""Sample-quality metrics of GANs on data with known modes.

:func:`mode_coverage` is the evaluation of the 2-D mixture benchmarks (rings and grids of Gaussians,
:mod:`fastgen.data.toy2d`) used by Metz et al. 2017 (unrolled GAN), Srivastava et al. 2017 (VEEGAN)
and Lin et al. 2018 (PacGAN):

* each sample is registered to its nearest mode centre; it is *high quality* when that distance is
  at most ``threshold_std`` standard deviations of the mode (3 in all three papers);
* a mode is *covered* when at least ``min_samples_per_mode`` high-quality samples are registered
  to it. PacGAN's published evaluation code (``MetricLogger`` in fjxmlzn/PacGAN, which follows
  VEEGAN's protocol) counts a mode as soon as one high-quality sample lands on it, so that is the
  default: it keeps numbers comparable with their tables (PacGAN evaluates 2500 samples).
  With 2500 samples on 25 modes (100 expected per mode) a single stray sample then counts as
  coverage; a stricter count that ignores samples in transit between modes is, e.g.,
  ``min_samples_per_mode = round(0.1 * n / K)`` (10 % of a mode's expected share);
* reverse KL = KL(p || uniform) = sum_k p_k log(K p_k), p the histogram of the high-quality samples
  over the modes (PacGAN's "reverse KL", computed like its code does, from the high-quality
  counts): 0 when they spread evenly, log(K / m) when they spread evenly over m modes only.
  PacGAN's paper (Table 1) defines its reverse KL on the nearest-mode histogram of *all* samples;
  :attr:`ModeCoverage.reverse_kl_all` is that one (samples with a NaN / inf are left out of it).
"""
from __future__ import annotations

import dataclasses
import math
import operator

import torch

from ..data.toy2d import Mixture
from ..divergences import kl_categorical

__all__ = ["ModeCoverage", "mode_coverage"]


@dataclasses.dataclass(eq=False)  # eq would compare the count tensors elementwise
class ModeCoverage:
    """The result of :func:`mode_coverage`.

    Attributes:
        modes_covered: number of modes with at least ``min_samples_per_mode`` high-quality samples.
        num_modes: K, the mixture's number of modes.
        high_quality_fraction: high-quality samples / all samples (NaN samples count as not high quality).
        counts: (K,) int64 CPU tensor, the high-quality samples registered to each mode.
        reverse_kl: KL(counts / counts.sum() || uniform over K) in nats; NaN when no sample is high quality.
        counts_all: (K,) int64 CPU tensor, every finite sample registered to its nearest mode.
        reverse_kl_all: KL(counts_all / counts_all.sum() || uniform over K) in nats, the paper's
            definition; NaN when no sample is finite.
    """

    modes_covered: int
    num_modes: int
    high_quality_fraction: float
    counts: torch.Tensor
    reverse_kl: float
    counts_all: torch.Tensor
    reverse_kl_all: float

    def as_dict(self) -> dict:
        """Plain Python values (counts as a list), e.g. for JSON."""
        return {"modes_covered": self.modes_covered, "num_modes": self.num_modes,
                "high_quality_fraction": self.high_quality_fraction, "counts": self.counts.tolist(),
                "reverse_kl": self.reverse_kl, "counts_all": self.counts_all.tolist(),
                "reverse_kl_all": self.reverse_kl_all}


def _reverse_kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(counts / counts.sum() || uniform over len(counts)) in nats; NaN for no counts."""
    total = int(counts.sum())
    if total == 0:
        return math.nan
    p = counts.to(torch.float64) / total
    return float(kl_categorical(p, torch.full_like(p, 1.0 / p.numel())))


def _check_samples(samples: object) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor) or not samples.dtype.is_floating_point:
        raise TypeError(f"samples must be a floating tensor, got "
                        f"{samples.dtype if isinstance(samples, torch.Tensor) else type(samples).__name__}")
    if samples.dim() != 2 or samples.shape[1] != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must have shape (n, 2) with n >= 1, got {tuple(samples.shape)}")
    return samples


def _check_threshold(threshold_std: object) -> float:
    if isinstance(threshold_std, bool) or not isinstance(threshold_std, (int, float)) or not threshold_std > 0:
        raise ValueError(f"threshold_std must be a number > 0 (a distance in stds), got {threshold_std!r}")
    return float(threshold_std)


def _check_min_samples(min_samples_per_mode: object) -> int:
    if min_samples_per_mode is None:
        return 1
    if isinstance(min_samples_per_mode, bool):
        raise TypeError("min_samples_per_mode must be an int or None, got bool")
    try:
        value = operator.index(min_samples_per_mode)
    except TypeError:
        got = type(min_samples_per_mode).__name__
        raise TypeError(f"min_samples_per_mode must be an int or None, got {got}") from None
    if value < 1:
        raise ValueError(f"min_samples_per_mode must be >= 1, got {value}")
    return value


@torch.no_grad()
def mode_coverage(samples: torch.Tensor, mixture: Mixture, *, threshold_std: float = 3.0,
                  min_samples_per_mode: int | None = None) -> ModeCoverage:
    """Modes covered, fraction of high-quality samples and reverse KL of ``samples`` against ``mixture``.

    Args:
        samples: (n, 2) floating tensor on any device (e.g. 2500 generator samples). Rows with a
            NaN or an infinity are never high quality.
        mixture: the data's :class:`~fastgen.data.toy2d.Mixture` (``ring_mixture()``, ``grid_mixture()``).
        threshold_std: a sample is high quality when its distance to the nearest centre is
            <= threshold_std * mixture.std.
        min_samples_per_mode: high-quality samples a mode needs to count as covered, an int >= 1;
            None: 1, the convention of PacGAN's evaluation (see the module docstring).

    Distances are computed in float32 (float64 samples in float64) on the samples' device,
    exactly (no matrix-product shortcut). Returns a :class:`ModeCoverage`.
    """
    samples = _check_samples(samples)
    if not isinstance(mixture, Mixture):
        raise TypeError(f"mixture must be a fastgen.data.toy2d.Mixture, got {type(mixture).__name__}")
    threshold = _check_threshold(threshold_std) * mixture.std
    min_samples = _check_min_samples(min_samples_per_mode)

    x = samples.to(torch.promote_types(samples.dtype, torch.float32))
    centers = mixture.centers.to(device=x.device, dtype=x.dtype)
    dist = torch.cdist(x, centers, compute_mode="donot_use_mm_for_euclid_dist")  # (n, K)
    nearest_dist, nearest = dist.min(dim=1)
    high_quality = nearest_dist <= threshold  # NaN compares False
    counts = torch.bincount(nearest[high_quality], minlength=mixture.num_modes).cpu()
    counts_all = torch.bincount(nearest[x.isfinite().all(dim=1)], minlength=mixture.num_modes).cpu()
    return ModeCoverage(modes_covered=int((counts >= min_samples).sum()), num_modes=mixture.num_modes,
                        high_quality_fraction=int(counts.sum()) / samples.shape[0], counts=counts,
                        reverse_kl=_reverse_kl_to_uniform(counts), counts_all=counts_all,
                        reverse_kl_all=_reverse_kl_to_uniform(counts_all))
